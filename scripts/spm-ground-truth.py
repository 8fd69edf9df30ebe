#!/usr/bin/env python3
"""Ground truth for loradex's SentencePiece ("llama") GGUF tokenizer.

Regenerates:
  tests/data/spm/vocab.json     the tokenizer.ggml.* metadata written to the GGUF
  tests/data/spm/expected.json  token ids from REAL llama.cpp (via llama-cpp-python)
                                for ~50 strings, llama.cpp's detokenization, and what
                                the sentencepiece library itself gives

What it does:
  1. Trains a tiny SentencePiece BPE model on the corpus below with Llama-2's trainer
     settings (byte_fallback, split_digits, add_dummy_prefix, identity normalization,
     remove_extra_whitespaces=False, allow_whitespace_only_pieces, unk/bos/eos=0/1/2).
     num_threads=1 and a fixed seed, so reruns give the same vocab.
  2. Writes a vocab-only GGUF the way llama.cpp's convert_hf_to_gguf.py writes an SPM
     llama vocab (tokens, scores, token types 1 normal / 2 unknown / 3 control / 6 byte,
     bos/eos/unk ids, add_bos/add_eos/add_space_prefix), plus just enough llama.*
     hparams for llama.cpp to load it with vocab_only=True (no tensors).
  3. Tokenizes every case with llama.cpp (llm.tokenize(text, add_bos, special)),
     detokenizes the ids with llm.detokenize(ids) and with llama.cpp's own
     llama_detokenize(remove_special=False, unparse_special=False), and records
     sp.encode(text) next to it. Cases where llama.cpp and sentencepiece disagree
     are printed (a difference is expected for special=True, add_bos=True and for
     literal "<s>"/"</s>" parsed as control tokens).

In expected.json "detokenized" / "detokenized_native" are UTF-8 strings, or null with
"detokenized_hex" / "detokenized_native_hex" holding the bytes when they are not valid
UTF-8. "detokenize_only" lists extra id sequences (not from any text) with the same
two detokenizations. "sentencepiece_ids" is sp.encode(text) (never adds bos/eos, never parses <s>).

Run (from the repo root):
    python3 -m venv /tmp/venv-spm
    /tmp/venv-spm/bin/pip install sentencepiece gguf numpy llama-cpp-python
    /tmp/venv-spm/bin/python scripts/spm-ground-truth.py
(llama-cpp-python builds llama.cpp from its sdist: 10-20 minutes on 2 cores.)
"""

import io
import json
import os
import sys
import tempfile
import ctypes
from importlib.metadata import version

import numpy as np
import sentencepiece as spm
import gguf
import llama_cpp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "tests", "data", "spm")
VOCAB_SIZE = 600
SEED = 1234

CORPUS = """\
Hello, how can I help you today?
Hi, I ordered a pair of shoes last week and they have not arrived yet.
I'm sorry to hear that. Could you give me your order number, please?
Sure, my order number is 48213-7765.
Thank you. Let me check the status of your order.
Your package was shipped on March 3 and should arrive within 5 business days.
Can I change the delivery address for my order?
Yes, you can change it before the item is shipped.
I would like to return this item and get a refund.
The refund will be processed within 3 to 5 business days.
Please make sure the item is unused and in its original packaging.
My credit card was charged twice for the same order.
I apologize for the inconvenience. I will escalate this to our billing team.
Is there a discount code for first-time customers?
You can use the code WELCOME10 to get 10% off your first order.
The total is $59.99 including tax and shipping.
Our customer service team is available 24/7.
Thank you for contacting us. Have a great day!
Where is my order? It has been 12 days.
The tracking number is 1Z999AA10123456784.
I received the wrong size. Can I exchange it for a larger one?
We will send you a prepaid return label by email.
Could you please confirm your email address?
My email is jane.doe@example.com and my phone is 010-1234-5678.
안녕하세요, 주문한 상품이 아직 도착하지 않았어요.
주문 번호를 알려주시면 바로 확인해 드리겠습니다.
배송지 주소를 변경하고 싶어요.
상품이 출고되기 전에는 주소 변경이 가능합니다.
환불은 영업일 기준 3일에서 5일 정도 소요됩니다.
불편을 드려 죄송합니다. 빠르게 처리해 드리겠습니다.
교환 신청은 어떻게 하나요?
고객센터 운영 시간은 평일 오전 9시부터 오후 6시까지입니다.
결제가 두 번 되었어요. 확인 부탁드립니다.
감사합니다. 좋은 하루 보내세요!
회원 가입하시면 첫 주문 10% 할인 쿠폰을 드립니다.
택배 기사님이 오늘 오후에 방문할 예정입니다.
사이즈가 맞지 않아서 교환하고 싶습니다.
이메일로 반품 라벨을 보내 드렸습니다.
주문하신 상품은 내일 도착할 예정입니다.
문의해 주셔서 감사합니다.
def refund(order_id, amount):
    if amount <= 0:
        raise ValueError("amount must be positive")
    return {"order": order_id, "refund": amount}
for i in range(10):
        print(i * 3.14)
{"status": "shipped", "eta_days": 5, "items": [1, 2, 3]}
SELECT id, status FROM orders WHERE customer_id = 42;
x = a + b - c * d / e;  // total
Version 2.0.1 was released on 2024-01-15.
Call 1-800-555-0199 for help.
"""

# (text, add_bos, special)
TEXTS = [
    "Hello, how can I help you today?",
    "Hello world",
    " Hello",
    "  Hello",
    "   Hello",
    "Hello  world",
    "Hello   world",
    "Hello ",
    "Hello  ",
    "a\tb",
    "\tindented",
    "line one\nline two",
    "para one\n\npara two",
    "\n",
    "\n\n",
    "12345",
    "3.14",
    "order 48213-7765",
    "$59.99",
    "안녕하세요, 주문한 상품이 아직 도착하지 않았어요.",
    "환불은 영업일 기준 3일에서 5일 정도 소요됩니다.",
    "감사합니다",
    "😀",
    "I love it 😀!",
    "龘",
    "똠햏",
    "똠햏 is not in the vocab",
    "Hello <s> world",
    "Hello </s> world",
    "<s>Hello</s>",
    "<s> Hello",
    "",
    " ",
    "  ",
    "!!!",
    "?!...",
    "...---!!!???",
    "주문 번호는 48213입니다. Thank you!",
    "My order 배송 is late",
    "def refund(order_id, amount):\n    return amount",
    "    if amount <= 0:",
    "{\"status\": \"shipped\"}",
    "<unk>",
    "café naïve",
    "Ünïcödé",
    "ⓐ",
    "\u00a0nbsp",
    "trailing newline\n",
    ("I ordered a pair of shoes last week and they have not arrived yet, so I contacted "
     "customer service; they told me the package was shipped on March 3 and should "
     "arrive within 5 business days. 고객센터 운영 시간은 평일 오전 9시부터 오후 6시까지입니다. "
     "My order number is 48213-7765 and the total was $59.99 😀."),
]

SPECIAL_TEXTS = {"Hello <s> world", "Hello </s> world", "<s>Hello</s>", "<s> Hello", "<unk>"}
BOS_TEXTS = {"Hello world", " Hello", "", " ", "안녕하세요, 주문한 상품이 아직 도착하지 않았어요.",
             "\n", "Hello <s> world", "<s>Hello</s>", "😀"}


def train(model_prefix):
    spm.set_random_generator_seed(SEED)
    sentences = CORPUS.splitlines()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=model_prefix,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=0.9995,
        byte_fallback=True,
        split_digits=True,
        split_by_unicode_script=True,
        split_by_whitespace=True,
        split_by_number=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        max_sentencepiece_length=16,
        user_defined_symbols=[],
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        num_threads=1,
        shuffle_input_sentence=False,
        hard_vocab_limit=True,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=model_prefix + ".model")


def vocab_from_sp(sp):
    # Same as convert_hf_to_gguf.py TextModel._create_vocab_sentencepiece
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(np.float32(sp.get_score(i))))
        t = gguf.TokenType.NORMAL
        if sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        types.append(int(t))
    return tokens, scores, types


def write_gguf(path, tokens, scores, types):
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("spm-ground-truth")
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_rope_dimension_count(16)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def native_detokenize(llm, ids):
    """llama.cpp's llama_detokenize(remove_special=False, unparse_special=False)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    cap = 4096
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, cap, False, False)
    assert 0 <= n <= cap, n
    return buf.raw[:n]


def put_text(case, key, b):
    try:
        case[key] = b.decode("utf-8")
    except UnicodeDecodeError:
        case[key] = None
        case[key + "_hex"] = b.hex()


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sp = train(os.path.join(tmp, "spm"))
        tokens, scores, types = vocab_from_sp(sp)
        assert tokens[:3] == ["<unk>", "<s>", "</s>"] and types[:3] == [2, 3, 3]
        gguf_path = os.path.join(tmp, "vocab.gguf")
        write_gguf(gguf_path, tokens, scores, types)
        llm = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)
        assert llm.n_vocab() == len(tokens)

        runs = []
        for t in TEXTS:
            runs.append((t, False, False))
            if t in BOS_TEXTS:
                runs.append((t, True, False))
            if t in SPECIAL_TEXTS:
                runs.append((t, False, True))
                runs.append((t, True, True))

        cases, disagree = [], []
        for text, add_bos, special in runs:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)
            sp_ids = sp.encode(text)
            case = {"text": text, "add_bos": add_bos, "special": special, "ids": ids}
            put_text(case, "detokenized", llm.detokenize(ids))
            put_text(case, "detokenized_native", native_detokenize(llm, ids))
            case["sentencepiece_ids"] = sp_ids
            cases.append(case)
            cmp = ids[1:] if add_bos and ids[:1] == [1] else ids
            if cmp != sp_ids:
                disagree.append(case)

        # ids -> bytes only (partial UTF-8 from byte-fallback tokens, control/unk tokens)
        detok_only = []
        emoji = llm.tokenize("😀".encode(), add_bos=False, special=False)
        for ids in (emoji[:-1], emoji[2:], [0], [1, 2], [2, 1], [1, 260, 1, 260]):
            d = {"ids": ids}
            put_text(d, "detokenized", llm.detokenize(ids))
            put_text(d, "detokenized_native", native_detokenize(llm, ids))
            detok_only.append(d)

    vocab = {"tokens": tokens, "scores": scores, "token_types": types,
             "bos": 1, "eos": 2, "unk": 0,
             "add_bos": True, "add_eos": False, "add_space_prefix": True}
    expected = {"llama_cpp_python": version("llama-cpp-python"),
                "sentencepiece": version("sentencepiece"),
                "gguf": version("gguf"),
                "cases": cases,
                "detokenize_only": detok_only}
    for name, obj in (("vocab.json", vocab), ("expected.json", expected)):
        with open(os.path.join(OUT_DIR, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=None, separators=(",", ":"))
            f.write("\n")

    print(f"vocab={len(tokens)} cases={len(cases)}")
    for c in disagree:
        print(f"DIFF add_bos={c['add_bos']} special={c['special']} text={c['text']!r}\n"
              f"  llama.cpp    {c['ids']}\n  sentencepiece {c['sentencepiece_ids']}")


if __name__ == "__main__":
    main()
