"""The generic Registry and the public register/build/list API."""

from __future__ import annotations

import string

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lightning_film
from lightning_film import nn as lfnn
from lightning_film.registry import (
    CONDITIONERS,
    NORMALIZERS,
    Registry,
    RegistryError,
    build_conditioner,
    build_normalizer,
    list_conditioners,
    list_normalizers,
    register_conditioner,
)

BUILT_IN_NORMALIZERS = {"layernorm", "rmsnorm", "dyt", "identity"}
BUILT_IN_CONDITIONERS = {
    "none",
    "additive",
    "concat",
    "cross_attention",
    "adaln",
    "adaln_zero",
    "adaln_single",
    "film",
    "film_exp",
    "film_tanh",
    "gate",
}


def test_import_alone_fills_every_registry():
    import subprocess
    import sys

    code = (
        "import sys, lightning_film as lf, lightning_film.registry as r;"
        "from lightning_film.data import nibbles, corpora;"
        "[print(','.join(reg.names())) for reg in (r.NORMALIZERS, r.CONDITIONERS, nibbles.NIBBLE_SCHEMES, corpora.CORPORA)];"
        "print('lightning.pytorch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert set(out[0].split(",")) >= BUILT_IN_NORMALIZERS
    assert set(out[1].split(",")) >= BUILT_IN_CONDITIONERS
    assert set(out[2].split(",")) >= {"high_nibble", "low_nibble", "utf8"}
    assert set(out[3].split(",")) >= {"shakespeare", "udhr"}
    assert out[4] == "False", "import lightning_film must not import Lightning (nn/ and the registries do not need it)"


def test_every_entry_has_a_one_line_doc():
    for registry in (NORMALIZERS, CONDITIONERS):
        for entry in registry.entries():
            assert entry.doc and "\n" not in entry.doc, entry.name


def test_unknown_name_lists_registered_and_closest():
    with pytest.raises(RegistryError) as err:
        build_conditioner("flim", dim=8, cond_dim=4)
    msg = str(err.value)
    assert "'flim'" in msg and "did you mean 'film'" in msg
    for name in list_conditioners():
        assert name in msg
    with pytest.raises(RegistryError, match="unknown normalizer 'rms_norm'.*did you mean 'rmsnorm'"):
        build_normalizer("rms_norm", 8)


def test_taken_name_needs_override():
    reg = Registry("widget")

    @reg.register("a")
    def first(dim):
        """First."""
        return dim

    def second(dim):
        """Second."""
        return -dim

    with pytest.raises(RegistryError, match="'a' is already taken.*override=True"):
        reg.register("a")(second)
    reg.register("a", override=True)(second)
    assert reg.build("a", 3) == -3
    reg.register("a")(second)  # registering the same object again is harmless


def test_spec_forms_name_mapping_path_class():
    by_name = build_conditioner("film", 8, 4)
    by_map = build_conditioner({"name": "film", "hidden_dim": 16}, 8, 4)
    by_path = build_conditioner("lightning_film.nn.conditioners.film:FiLM", 8, 4)
    by_class = build_conditioner(lfnn.FiLM, 8, 4)
    assert all(isinstance(m, lfnn.FiLM) for m in (by_name, by_map, by_path, by_class))
    assert by_map.hidden_dim == 16 and by_name.hidden_dim is None
    # keyword arguments win over mapping options
    assert build_conditioner({"name": "film", "hidden_dim": 16}, 8, 4, hidden_dim=2).hidden_dim == 2


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ({"hidden_dim": 3}, "needs a 'name' key"),
        ("no_such_module_xyz:Thing", "cannot import module 'no_such_module_xyz'"),
        ("lightning_film.nn:NoSuchThing", "has no attribute 'NoSuchThing'"),
        (42, "must be a registered name"),
        ({"name": "film", "hiden_dim": 3}, r"unknown option\(s\) \['hiden_dim'\]; it accepts .*'hidden_dim'"),
    ],
)
def test_bad_specs_are_named(spec, pattern):
    with pytest.raises(RegistryError, match=pattern):
        build_conditioner(spec, 8, 4)


def test_register_conditioner_decorator_and_use_in_transformer():
    @register_conditioner("test_scale_only")
    class ScaleOnly(lfnn.ProjectedConditioner):
        """Scale-only FiLM used by this test."""

        def build(self):
            self.scale = self.project(self.dim)

        def modulate(self, h, cond):
            return h * (1 + self.scale(self.signal(h, cond)))

    try:
        assert "test_scale_only" in list_conditioners()
        model = lightning_film.Transformer(8, 1, 2, 4, conditioner="test_scale_only")
        out = model(torch.randn(2, 3, 8), lightning_film.Conditioning(vector=torch.randn(2, 4)))
        assert out.shape == (2, 3, 8)
        with pytest.raises(RegistryError, match="already taken"):
            register_conditioner("test_scale_only")(lfnn.FiLM)
    finally:
        CONDITIONERS._entries.pop("test_scale_only")


@pytest.mark.parametrize("bad", ["", "a:b", "a.b", "with space", None])
def test_invalid_names_rejected(bad):
    with pytest.raises(RegistryError, match="invalid widget name"):
        Registry("widget").add(bad, lambda: None)


names = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(names, min_size=1, max_size=8, unique=True), names)
def test_property_lookup(registered, query):
    """Every registered name resolves to its own factory; anything else names itself and all names."""
    reg = Registry("widget")
    for n in registered:
        reg.add(n, lambda n=n: n)
    assert reg.names() == sorted(registered)
    for n in registered:
        assert reg.build(n) == n
    if query not in registered:
        with pytest.raises(RegistryError) as err:
            reg.get(query)
        assert repr(query) in str(err.value)
        assert all(n in str(err.value) for n in registered)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=64))
def test_property_mapping_spec_equals_keywords(dim):
    a = build_normalizer({"name": "rmsnorm", "eps": 1e-3}, dim)
    b = build_normalizer("rmsnorm", dim, eps=1e-3)
    assert type(a) is type(b) and a.eps == b.eps == 1e-3 and a.weight.shape == (dim,)


def test_list_functions_sorted_and_complete():
    assert set(list_normalizers()) >= BUILT_IN_NORMALIZERS
    assert set(list_conditioners()) >= BUILT_IN_CONDITIONERS
    assert list_conditioners() == sorted(list_conditioners())
