from zflight.attribution._layers import layer_label


def test_layer_labels_drop_only_zflights_container_prefix():
    names = ["features.conv5", "classifier.fc7", "layer4.1.conv2", "layer1", "features.28", "features.1.0.block"]
    assert [layer_label(n) for n in names] == ["conv5", "fc7", "layer4.1.conv2", "layer1", "features.28",
                                               "features.1.0.block"]
