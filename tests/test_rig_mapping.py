"""A rig's own cameras start from the official camera they resemble: `CAM_FRONT=camera_front_wide_120fov`.

- the one parser (data/cameras.py parse_cameras) on good and bad lists, and the YAML checks built on it;
- loading the released-shaped 7-view file copies each mapped camera's official row bit-exactly (the mean for
  an unmapped one), while a file whose rows carry the rig's names loads them by those names;
- the caption prefixes of mapped cameras are the official cameras' in the dataset's captions, in the
  converter's cached text and in generation's prompts (expected strings spelled out from
  DEFAULT_CAPTION_PREFIXES, not from caption_prefix);
- network.json records the mapping (`camera_origins`) and reads back; a file without it reads as before.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import pytest
import torch
from helpers import load_script

from cosmos_composer import generate as gen
from cosmos_composer.checkpoint.load import load_consolidated_into_network
from cosmos_composer.checkpoint.network_config import (
    NETWORK_FILE,
    NetworkConfigError,
    network_config_path,
    read_network_config,
    write_network_config,
)
from cosmos_composer.config import ConfigError, load_config, network_and_overrides
from cosmos_composer.data import mds
from cosmos_composer.data.cameras import (
    DEFAULT_CAMERAS,
    DEFAULT_CAPTION_PREFIXES,
    GENERIC_CAPTION_PREFIX,
    parse_cameras,
)
from cosmos_composer.data.dataset import TransferStreamingDataset
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.encoders.text import Reason1TextEmbedder
from cosmos_composer.generation.prompts import view_prompts
from cosmos_composer.models import build_network, get_config

REPO = Path(__file__).resolve().parents[1]
# Three cameras mapped to official ones and one outside the 7; front wide's camera is not first.
RIG = [
    "CAM_BACK=camera_rear_tele_30fov",
    "CAM_FRONT=camera_front_wide_120fov",
    "CAM_LEFT=camera_cross_left_120fov",
    "CAM_X",
]
NAMES = ("CAM_BACK", "CAM_FRONT", "CAM_LEFT", "CAM_X")
ORIGINS = {"CAM_BACK": "camera_rear_tele_30fov", "CAM_FRONT": "camera_front_wide_120fov", "CAM_LEFT": "camera_cross_left_120fov"}  # fmt: skip
H, W, F = 32, 48, 5


def expected_captions(caption: str) -> list[str]:
    """The per-view captions of RIG, written out: official prefixes, the caption on CAM_FRONT, generic for CAM_X."""
    return [
        DEFAULT_CAPTION_PREFIXES["camera_rear_tele_30fov"] + " ",
        DEFAULT_CAPTION_PREFIXES["camera_front_wide_120fov"] + " " + caption,
        DEFAULT_CAPTION_PREFIXES["camera_cross_left_120fov"] + " ",
        GENERIC_CAPTION_PREFIX + " ",
    ]


# ----------------------------------------------------------------------------- the parser
def test_parser_reads_names_and_mappings():
    rig = parse_cameras([*RIG[:2], " CAM_LEFT = camera_cross_left_120fov", "CAM_X", "camera_front_tele_30fov"], "w")
    assert rig.names == (*NAMES, "camera_front_tele_30fov")
    assert rig.origins == ORIGINS  # an official name maps to itself, an unknown one without '=' to nothing
    assert parse_cameras(None, "w").names == DEFAULT_CAMERAS and parse_cameras(None, "w").origins == {}
    same = parse_cameras(["camera_front_wide_120fov=camera_front_wide_120fov"], "w")  # a no-op mapping
    assert same.names == ("camera_front_wide_120fov",) and same.origins == {}


@pytest.mark.parametrize(
    ("cameras", "message"),
    [
        (["CAM_FRONT=camera_front"], r"where: 'CAM_FRONT=camera_front' maps CAM_FRONT to 'camera_front', which is not "
         r"an official camera\. Fix: map it to one of the 7 official cameras \['camera_front_wide_120fov', .*"
         r"'camera_front_tele_30fov'\]"),
        (["CAM_A=camera_rear_tele_30fov=x"], r"maps CAM_A to 'camera_rear_tele_30fov=x', which is not an official"),
        (["CAM_A="], r"maps CAM_A to '', which is not an official camera"),
        (["camera_front_tele_30fov=camera_front_wide_120fov"], r"maps the official camera camera_front_tele_30fov"),
        (["CAM_A=camera_rear_tele_30fov", "CAM_A=camera_front_wide_120fov"], r"\['CAM_A'\] are listed more than once"),
        (["=camera_rear_tele_30fov"], r"camera name\(s\) \[''\] must be non-empty"),
        (["CAM A=camera_rear_tele_30fov"], r"camera name\(s\) \['CAM A'\] must be"),
        ([], r"the camera list is empty"),
    ],
)  # fmt: skip
def test_parser_refuses_bad_lists_naming_where(cameras, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_cameras(cameras, "where")
    assert str(error.value).startswith("where: ")


def test_yaml_mapping_reaches_the_network_config_and_bad_ones_are_refused():
    yaml = REPO / "yamls" / "hdmap_3cam.yaml"
    cameras = "train_loader.dataset.cameras=[CAM_FRONT=camera_front_wide_120fov,CAM_L=camera_cross_left_120fov,CAM_R]"
    cfg = load_config(yaml, [cameras])
    overrides = network_and_overrides(cfg)[1]
    assert overrides["camera_names"] == ["CAM_FRONT", "CAM_L", "CAM_R"]
    config = get_config(cfg.model.preset, **overrides)
    assert dict(config.camera_origins) == {"CAM_FRONT": "camera_front_wide_120fov", "CAM_L": "camera_cross_left_120fov"}
    with pytest.raises(ConfigError, match=r"train_loader\.dataset\.cameras.*'CAM_R=rear' maps CAM_R to 'rear'"):
        load_config(yaml, [cameras.replace("CAM_R]", "CAM_R=rear]")])
    eval_loader = "eval_loader.dataset={local: x, cameras: [CAM_FRONT,CAM_L=camera_cross_left_120fov,CAM_R]}"
    with pytest.raises(ConfigError, match=r"eval_loader\.dataset\.cameras"):  # another mapping than training's
        load_config(yaml, [cameras, eval_loader])


# ----------------------------------------------------------------------------- view-embedding rows
@pytest.fixture(scope="module")
def released_7view(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 7-view tiny multiview file shaped as the released one (net.* keys, bf16, no network.json), with a
    distinct random row per camera."""
    torch.manual_seed(0)
    state = {key: torch.randn_like(value).bfloat16() for key, value in build_network("tiny-multiview").state_dict().items()}  # fmt: skip
    path = tmp_path_factory.mktemp("released") / "tiny_multiview_ema_bf16.pt"
    torch.save({f"net.{key}": value for key, value in state.items()}, path)
    return path, state


def test_mapped_cameras_copy_their_official_rows_from_the_7view_file(released_7view, capsys):
    path, state = released_7view
    net = build_network("tiny-multiview", n_cameras_emb=4, camera_names=NAMES, camera_origins=ORIGINS)
    report = load_consolidated_into_network(net, path)
    rows_7 = state["view_embeddings.weight"]
    rows = net.view_embeddings.weight.detach()
    for view, camera in enumerate(NAMES[:3]):
        assert torch.equal(rows[view], rows_7[DEFAULT_CAMERAS.index(ORIGINS[camera])].float()), camera
    torch.testing.assert_close(rows[3], rows_7.float().mean(dim=0), rtol=0, atol=1e-2)  # bf16 rounding of the mean
    line = report.view_rows
    assert "CAM_BACK <- camera_rear_tele_30fov, CAM_FRONT <- camera_front_wide_120fov, CAM_LEFT <- " in line
    assert "added CAM_X as the mean of the file's 7 rows" in line and "kept the rows" not in line
    dropped = line.split("dropped ")[1].split(", ")
    assert sorted(dropped) == sorted(set(DEFAULT_CAMERAS) - set(ORIGINS.values()))
    assert line in capsys.readouterr().out
    for key, value in state.items():
        if key != "view_embeddings.weight":
            assert torch.equal(net.state_dict()[key], value.float()), key


def test_a_file_with_the_rigs_names_loads_rows_by_those_names(tmp_path, caplog):
    """A run trained with the mapping holds rows named CAM_*; they load by name even where the file also holds
    the official camera they started from."""
    file_cameras = ("camera_front_wide_120fov", "CAM_FRONT", "CAM_BACK")
    file_origins = {"CAM_FRONT": "camera_front_wide_120fov", "CAM_BACK": "camera_rear_tele_30fov"}
    trained = build_network("tiny-multiview", n_cameras_emb=3, camera_names=file_cameras, camera_origins=file_origins)
    torch.manual_seed(1)
    with torch.no_grad():
        trained.view_embeddings.weight.normal_()
    path = tmp_path / "model_ema_fp32.pt"
    torch.save({f"net.{key}": value for key, value in trained.state_dict().items()}, path)
    write_network_config(tmp_path / NETWORK_FILE, "tiny-multiview", trained.config)
    rows = trained.view_embeddings.weight.detach()

    net = build_network("tiny-multiview", n_cameras_emb=2, camera_names=("CAM_BACK", "CAM_FRONT"), camera_origins=file_origins)  # fmt: skip
    report = load_consolidated_into_network(net, path)
    assert torch.equal(net.view_embeddings.weight[0], rows[2]) and torch.equal(net.view_embeddings.weight[1], rows[1])
    assert "kept the rows of 2 cameras" in report.view_rows and " <- " not in report.view_rows
    assert not any("camera_origins" in r.message for r in caplog.records)

    # The same rows under another mapping would get another caption prefix than they were trained with: said.
    unmapped = build_network("tiny-multiview", n_cameras_emb=2, camera_names=("CAM_BACK", "CAM_FRONT"))
    with caplog.at_level(logging.WARNING):
        load_consolidated_into_network(unmapped, path)
    warning = next(r.message for r in caplog.records if "camera_origins" in r.message)
    assert "CAM_BACK: camera_rear_tele_30fov in the file, none in the network" in warning
    assert "CAM_FRONT: camera_front_wide_120fov in the file, none in the network" in warning


# ----------------------------------------------------------------------------- network.json
def test_network_json_records_the_mapping_and_reads_files_without_it(tmp_path, caplog):
    config = get_config("tiny-multiview", n_cameras_emb=4, camera_names=NAMES, camera_origins=ORIGINS)
    path = write_network_config(tmp_path / NETWORK_FILE, "tiny-multiview", config)
    document = json.loads(path.read_text())
    assert document["config"]["camera_origins"] == [[c, o] for c, o in ORIGINS.items()]
    recorded = read_network_config(path)
    assert recorded.config == config and dict(recorded.config.camera_origins) == ORIGINS
    assert build_network(recorded.preset, **recorded.overrides).config == config

    # A file written before camera_origins existed: no mapping, read as before (and no warning about it).
    del document["config"]["camera_origins"]
    path.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING):
        old = read_network_config(path)
    assert old.config == get_config("tiny-multiview", n_cameras_emb=4, camera_names=NAMES)
    assert old.config.camera_origins == () and not caplog.records

    for origins, message in [
        ([["CAM_X", "camera_nope"]], r"'CAM_X=camera_nope' maps CAM_X to 'camera_nope', which is not an official"),
        ({"CAM_X": "camera_rear_tele_30fov"}, r"camera_origins=\{.*\} is not of type"),
        ([["CAM_Y", "camera_rear_tele_30fov"]], r"maps CAM_Y, which is not one of the cameras"),
    ]:
        document["config"]["camera_origins"] = origins
        path.write_text(json.dumps(document))
        with pytest.raises(NetworkConfigError, match=rf"{path}: .*{message}"):
            read_network_config(path)


# ----------------------------------------------------------------------------- caption prefixes
class CaptionCodeEmbedder:
    """A stand-in text encoder: each caption becomes 512 tokens holding a code of its text (exact in float16),
    and every caption it embedded is recorded."""

    embed_dim = 8

    def __init__(self) -> None:
        self.seen: list[str] = []

    @staticmethod
    def code(caption: str) -> float:
        return float(zlib.crc32(caption.encode()) % 1000)

    def to(self, *args, **kwargs) -> "CaptionCodeEmbedder":  # build_encoders moves and freezes the encoder
        return self

    def eval(self) -> "CaptionCodeEmbedder":
        return self

    def embed(self, captions: list[str]) -> torch.Tensor:
        self.seen += captions
        return torch.tensor([self.code(c) for c in captions])[:, None, None].expand(-1, 512, self.embed_dim).clone()


def test_mapped_prefixes_in_dataset_captions_and_cached_text_are_the_official_ones(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "mds"
    make_demo_dataset(raw, samples=1, frames=F, height=H, width=W, cameras=RIG, progress=False)
    assert sorted(p.name for p in (raw / "videos").iterdir()) == sorted(f"ftheta_{c}" for c in NAMES)
    assert [p.name for p in (raw / "captions").iterdir()] == ["ftheta_CAM_FRONT"]  # mapped to front wide
    caption = json.loads((raw / "captions" / "ftheta_CAM_FRONT" / "demo_0000.json").read_text())["caption"]

    embedder = CaptionCodeEmbedder()
    monkeypatch.setattr(Reason1TextEmbedder, "from_pretrained", classmethod(lambda cls, *a, **kw: embedder))
    code = load_script("convert_to_mds").main(
        ["--layout", "multiview-hdmap", "--input", str(raw), "--output", str(out), "--min-frames", str(F),
         "--cameras", ",".join(RIG), "--precompute", "text", "--raw-text", "--text-encoder", "fake", "--device", "cpu",
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    assert embedder.seen == expected_captions(caption)  # the cached text's captions

    sample = TransferStreamingDataset(local=str(out), num_frames=F, height=H, width=W, cameras=RIG)[0]
    assert sample["camera_keys_selection"] == list(NAMES)
    assert sample["ai_caption"] == expected_captions(caption)  # online captions
    assert sample["front_cam_view_idx_sample_position"] == 1
    cached_V_L = sample[mds.TEXT_EMBEDDING][:, 0].reshape(len(NAMES), 512)
    assert cached_V_L[:, 0].tolist() == [embedder.code(c) for c in sample["ai_caption"]]  # cached == online


def test_generation_prompts_of_a_mapped_rig_use_the_official_prefixes(tmp_path, monkeypatch):
    assert view_prompts("a road", list(NAMES), camera_origins=ORIGINS) == expected_captions("a road")
    assert view_prompts("a road", list(NAMES), "front-only", ORIGINS) == [" ", "a road", " ", " "]

    # generate.py: --cameras takes the rig's names; each gets its trained view id and the recorded prefix.
    raw = tmp_path / "raw"
    make_demo_dataset(raw, samples=1, frames=F, height=H, width=W, cameras=RIG, progress=False)
    checkpoint = tmp_path / "model_ema_bf16.pt"
    net = build_network("tiny-multiview", n_cameras_emb=4, camera_names=NAMES, camera_origins=ORIGINS)
    torch.save({f"net.{key}": value for key, value in net.state_dict().items()}, checkpoint)
    write_network_config(network_config_path(checkpoint), "tiny-multiview", net.config)
    embedded: list[str] = []
    original_embed = Reason1TextEmbedder.embed
    monkeypatch.setattr(Reason1TextEmbedder, "embed", lambda self, texts: embedded.extend(texts) or original_embed(self, texts))  # fmt: skip
    ids: list[list[int]] = []
    original_view_indices = gen.view_indices
    monkeypatch.setattr(gen, "view_indices", lambda *a, **kw: ids.append(a[0]) or original_view_indices(*a, **kw))
    gen.generate(
        gen.GenerateOptions(
            checkpoint=str(checkpoint),
            control=str(raw / "control_input_hdmap_bbox"),
            sample="demo_0000",
            cameras=["CAM_X", "CAM_FRONT"],
            prompt="a road",
            negative_prompt="bad",
            steps=1,
            output=str(tmp_path / "gen.mp4"),
            vae="tiny",
            text_encoder="tiny",
            height=H,
            width=W,
            progress=False,
        )
    )
    front_wide = DEFAULT_CAPTION_PREFIXES["camera_front_wide_120fov"]
    assert embedded[:2] == [f"{front_wide} a road", f"{GENERIC_CAPTION_PREFIX} "]  # view order: CAM_FRONT, CAM_X
    assert ids == [["CAM_FRONT", "CAM_X"]]
    assert gen.view_indices(ids[0], 1, network_cameras=NAMES).tolist() == [[1, 3]]
