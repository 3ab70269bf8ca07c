"""Fixtures of this folder's tests: the tiny ImageNet-style folder ``src`` and its pack ``packed``."""

from tests.imagenet_folder import packed, src  # noqa: F401 (pytest finds fixtures by name here)
