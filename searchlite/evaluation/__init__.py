"""`searchlite eval`: the CLIP paper's evaluation protocol on a user's own labelled photos and
captions: zero-shot accuracy per prompt-template set, few-shot linear-probe curves, and
text<->image retrieval recall (Radford et al. 2021, sections 3.1, 3.2 and 3.1.4)."""
