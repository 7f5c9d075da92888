import pytest

from interlayer.errors import LayerIndexError, UnknownSiteError
from interlayer.model.sites import SITE_KINDS, Site, parse_site


@pytest.mark.parametrize("kind", [k for k in SITE_KINDS if k != "mlp_in"])
def test_short_and_transformer_lens_names_agree(kind):
    assert parse_site(f"{kind}.2", 4) == parse_site(f"blocks.2.hook_{kind}", 4) == Site(2, kind)
    assert parse_site(f"{kind}.2", 4).transformer_lens_name == f"blocks.2.hook_{kind}"


def test_mlp_in_is_transformer_lens_ln2_normalized():
    assert parse_site("mlp_in.2", 4) == parse_site("blocks.2.ln2.hook_normalized", 4) == Site(2, "mlp_in")
    assert parse_site("mlp_in.2", 4).transformer_lens_name == "blocks.2.ln2.hook_normalized"
    # TransformerLens's hook_mlp_in is before ln2 (resid_mid): refused, naming the right one
    with pytest.raises(UnknownSiteError, match="ln2.hook_normalized"):
        parse_site("blocks.2.hook_mlp_in", 4)
    assert Site(1, "resid_mid").order < Site(1, "mlp_in").order < Site(1, "mlp_out").order


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(UnknownSiteError, match="resid_post") as info:
        parse_site("resid_postt.1", 4)
    assert "resid_postt" in str(info.value)


def test_malformed_name():
    with pytest.raises(UnknownSiteError, match="expected"):
        parse_site("layer six", 4)


@pytest.mark.parametrize("layer", [-1, 4, 99])
def test_layer_out_of_range_names_valid_range(layer):
    with pytest.raises(LayerIndexError, match=r"0\.\.3"):
        parse_site(f"resid_post.{layer}", 4)


def test_sites_sort_in_forward_order():
    sites = [parse_site(n, 4) for n in ["resid_post.1", "attn_out.1", "resid_pre.2", "resid_mid.0"]]
    assert [s.name for s in sorted(sites, key=lambda s: s.order)] == ["resid_mid.0", "attn_out.1", "resid_post.1", "resid_pre.2"]
