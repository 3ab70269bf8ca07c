from zflight.attribution._layers import layer_label


def test_layer_labels_drop_only_zflights_container_prefix():
    names = ["features.conv5", "classifier.fc7", "layer4.1.conv2", "layer1", "features.28", "features.1.0.block"]
    assert [layer_label(n) for n in names] == ["conv5", "fc7", "layer4.1.conv2", "layer1", "features.28",
                                               "features.1.0.block"]


def test_a_vector_layers_units_become_one_by_one_maps():
    import torch

    from zflight.attribution._layers import as_unit_maps

    out = torch.arange(6.0).reshape(2, 3)
    maps = as_unit_maps(out, "layer='fc7'", "top activations need feature maps")
    assert maps.shape == (2, 3, 1, 1) and torch.equal(maps.flatten(1), out)


def test_outputs_that_are_no_unit_maps_are_one_line_naming_the_layer():
    import pytest
    import torch

    from zflight.attribution._layers import as_unit_maps

    with pytest.raises(ValueError, match=r"^layers: 'tokens' outputs shape \(2, 5, 7\); dissection needs maps "
                                         r"\[N, C, H, W\] \(or \[N, C\]\)$"):
        as_unit_maps(torch.zeros(2, 5, 7), "layers: 'tokens'", "dissection needs maps")
    with pytest.raises(ValueError, match=r"^layer='argmax' outputs torch.int64, not floating-point activations$"):
        as_unit_maps(torch.zeros(2, 5, dtype=torch.long), "layer='argmax'", "top activations need feature maps")
