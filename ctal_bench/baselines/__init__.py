"""Late-fusion baselines, one module each, registered as models on import.

text_only, audio_only, late_fusion (LF-DNN / MultiBench), tfn (Zadeh et al. 2017), lmf (Liu et al.
2018) and mult (Tsai et al. 2019). They take the same batches as CTAL and return the same
``ModelOutput``; ``ctal_bench.catalog`` is the one place that imports them.
"""
