import inspect

import zflight
import zflight.analysis
import zflight.attribution
import zflight.figures
import zflight.callbacks
import zflight.data


def test_every_public_name_exists_and_has_a_docstring():
    for package in (zflight, zflight.attribution, zflight.analysis, zflight.figures, zflight.callbacks, zflight.data):
        for name in package.__all__:
            obj = getattr(package, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{package.__name__}.{name} has no docstring"


def test_top_level_docstring_example_runs():
    import doctest

    assert doctest.testmod(zflight).failed == 0
