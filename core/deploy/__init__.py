"""A trained run made usable outside jaxyard: exported artifacts (``export``) and batched inference (``predict``)."""
