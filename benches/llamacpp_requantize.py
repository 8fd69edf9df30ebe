"""Requantizes a GGUF with llama.cpp's own quantizer (llama-cpp-python), to benchmark loradex
on the mixed files people run, such as Q4_K_M:

    PYTHON benches/llamacpp_requantize.py IN.gguf OUT.gguf [TYPE]

TYPE is a llama.cpp file type name without its prefix (default Q4_K_M). From the Q4_1
SmolLM2 this requantizes already-quantized weights (llama.cpp's allow_requantize), which is
fine for speed; and since 576 columns do not split into 256-value super-blocks, llama.cpp
falls back to Q5_0 / Q8_0 for most of its tensors, keeping Q4_K and Q6_K where they fit.
"""
import ctypes
import sys

import llama_cpp


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    name = "LLAMA_FTYPE_MOSTLY_" + (sys.argv[3] if len(sys.argv) == 4 else "Q4_K_M")
    ftype = getattr(llama_cpp, name, None)
    if ftype is None:
        sys.exit(f"unknown llama.cpp file type {name}")
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.allow_requantize = True
    p.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed: {rc}")
    print(f"{dst}: {name[len('LLAMA_FTYPE_MOSTLY_'):]}")


if __name__ == "__main__":
    main()
