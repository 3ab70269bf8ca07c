"""Fixtures of this folder's tests: the tiny ImageNet-style folder ``src`` and its pack ``packed``; a
resnet18 weights file and folders of photos (``tests/any_model.py``)."""

from tests.any_model import photos, resnet18_file  # noqa: F401 (a torchvision model and photos)
from tests.imagenet_folder import packed, src  # noqa: F401 (pytest finds fixtures by name here)
