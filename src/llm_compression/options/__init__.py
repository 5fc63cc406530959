"""What the methods accept, as data: torch-free facts shared by the library and the workflow's planning.

Each module here holds one definition of a family's names, options, defaults and checks; the science
modules (:mod:`llm_compression.prune`, :mod:`llm_compression.quantize`, :mod:`llm_compression.heal`) and
the planning layer (:mod:`llm_compression.config`, :mod:`llm_compression.planning`) both read them.
Nothing in this package imports torch, transformers, peft, bitsandbytes or lm-eval, so building the
workflow's DAG never pays for them.

- :mod:`.pruning` -- one typed options object per pruning method and the method registry;
- :mod:`.quantization` -- quantization schemes and the options each one reads;
- :mod:`.healing` -- healing recipes (defaults and checks);
- :mod:`.dtypes` -- compute dtypes and the one check of them every stage applies.
"""
