"""The shipped class-name lists: counts, uniqueness, and indices read from a second,
independent source for each list (see tf_models/labels/README.md)."""
from __future__ import annotations

import pytest

from tf_models import labels


@pytest.mark.parametrize("dataset, count", [("k400", 400), ("ssv2", 174), ("ucf101", 101), ("k710", 710),
                                            ("k600", 600), ("k700", 700)])
def test_counts_and_uniqueness(dataset, count):
    names = labels.load(dataset)
    assert len(names) == count
    assert len(set(names)) == count
    assert all(n == n.strip() and n for n in names)


def test_k400_is_the_alphabetical_official_list():
    names = labels.load("k400")
    assert names == sorted(names)
    # VideoMAEv2 misc/label_map_k400.txt: same order, 13 classes under their later names
    assert names[0] == "abseiling" and names[1] == "air drumming" and names[399] == "zumba"
    assert (names[12], names[100], names[108], names[370]) == ("balloon blowing", "drinking", "dying hair", "tying tie")


# OpenGVLab/VideoMAEv2 misc/label_710to400.json (commit 29eab1e), verbatim: entry i is the K710
# index of K400 class i.
K400_TO_K710 = [341, 158, 189, 16, 398, 302, 202, 318, 80, 323, 249, 315, 18, 88, 365, 52, 257, 103, 113, 162, 75, 338, 388,
    352, 308, 125, 159, 82, 10, 44, 92, 396, 185, 258, 383, 178, 71, 260, 15, 335, 192, 326, 58, 133, 172,
    120, 334, 280, 306, 101, 337, 173, 203, 356, 4, 209, 332, 7, 65, 115, 95, 81, 232, 344, 303, 201, 342,
    351, 165, 397, 252, 368, 285, 244, 363, 355, 79, 268, 110, 343, 72, 219, 321, 208, 345, 340, 84, 61, 206,
    188, 62, 55, 29, 237, 2, 286, 245, 90, 8, 372, 325, 380, 226, 274, 346, 354, 97, 28, 246, 194, 212, 26,
    281, 147, 215, 264, 30, 14, 301, 275, 66, 265, 224, 104, 121, 357, 117, 54, 107, 279, 109, 122, 289, 78,
    59, 241, 179, 291, 349, 142, 152, 220, 311, 386, 145, 239, 392, 99, 266, 100, 176, 314, 167, 64, 160, 216,
    49, 207, 222, 184, 171, 22, 234, 148, 339, 218, 294, 324, 233, 262, 9, 377, 41, 390, 53, 150, 361, 73,
    247, 96, 60, 364, 298, 70, 395, 143, 236, 336, 196, 385, 33, 144, 1, 307, 393, 256, 263, 375, 235, 273,
    243, 106, 366, 271, 186, 287, 51, 299, 175, 276, 369, 57, 11, 373, 35, 163, 297, 195, 399, 290, 382, 319,
    134, 40, 310, 223, 151, 270, 3, 387, 137, 31, 309, 217, 17, 374, 190, 277, 327, 135, 394, 50, 284, 177,
    67, 379, 141, 353, 108, 37, 136, 197, 272, 21, 312, 213, 164, 182, 250, 91, 89, 253, 199, 333, 248, 63,
    119, 0, 130, 102, 32, 227, 362, 296, 23, 47, 156, 180, 183, 313, 5, 350, 389, 328, 112, 93, 378, 359, 83,
    282, 174, 371, 48, 360, 24, 376, 68, 42, 221, 140, 181, 118, 116, 381, 94, 77, 27, 45, 87, 230, 292, 76,
    39, 169, 131, 19, 126, 367, 105, 114, 193, 210, 305, 149, 98, 259, 200, 12, 320, 254, 146, 278, 242, 261,
    36, 293, 251, 214, 25, 304, 204, 157, 255, 111, 229, 283, 128, 161, 170, 86, 74, 138, 6, 198, 384, 187,
    155, 348, 154, 166, 124, 205, 132, 13, 34, 225, 43, 347, 228, 358, 38, 127, 231, 316, 269, 288, 139, 168,
    46, 238, 317, 69, 211, 123, 391, 330, 295, 322, 329, 129, 240, 153, 267, 85, 300, 20, 191, 56, 370, 331]
# The 13 classes VideoMAEv2 (and K710) spell with their later Kinetics names.
RENAMED = {12: "inflating balloons", 53: "changing wheel (not on bike)", 73: "cooking sausages (not on barbeque)",
           100: "sipping cup", 108: "dyeing hair", 136: "person collecting garbage", 158: "hugging baby",
           186: "making the bed", 203: "opening wine bottle", 214: "picking apples", 308: "skiing mono",
           320: "smelling feet", 370: "tying necktie"}


def test_k710_order_agrees_with_videomae_v2_index_map():
    k400, k710 = labels.load("k400"), labels.load("k710")
    assert len(K400_TO_K710) == 400
    for i400, i710 in enumerate(K400_TO_K710):
        assert k710[i710] == RENAMED.get(i400, k400[i400])
    assert k710[:3] == ["riding a bike", "marching", "dodgeball"]


def test_shipped_k400_remap_is_the_typed_upstream_list():
    """--remap-head k400 reads tf_models/labels/k710_to_k400.json: the list typed above, verbatim."""
    assert labels.k710_index("k400") == K400_TO_K710


@pytest.mark.parametrize("target, count", [("k600", 600), ("k700", 700)])
def test_k600_k700_remaps_name_the_same_classes_as_k710(target, count):
    """Each row a remap keeps is the K710 class of the same name: a shifted list or a shifted name
    file would pair other classes."""
    index, names, k710 = labels.k710_index(target), labels.load(target), labels.load("k710")
    assert len(index) == count == len(set(index))
    assert [k710[i] for i in index] == names
    if target == "k600":  # spot check, label_map_k600.txt's first lines (not alphabetical)
        assert names[:3] == ["feeding fish", "cosplaying", "playing laser tag"]


def test_unknown_remap_target_is_refused():
    with pytest.raises(ValueError, match="no K710 remap to 'ssv2'"):
        labels.k710_index("ssv2")


# From the labels.json index mapping of Something-Something v2 (templates with brackets).
SSV2 = {0: "Approaching [something] with your camera", 32: "Moving away from [something] with your camera",
        102: "Putting [number of] [something] onto [something]", 131: "[Something] being deflected from [something]",
        160: "Touching (without moving) [part] of [something]", 173: "Wiping [something] off of [something]"}


def test_ssv2_indices_match_labels_json():
    names = labels.load("ssv2")
    assert names == sorted(names)  # labels.json numbers the bracket-free templates alphabetically
    for index, template in SSV2.items():
        assert names[index] == template.replace("[", "").replace("]", "")


# UCF101 classInd.txt is 1-based: "35 Hammering", "36 HammerThrow", "101 YoYo".
def test_ucf101_follows_classind():
    names = labels.load("ucf101")
    assert names == sorted(names, key=str.lower)  # classInd.txt's order
    assert (names[0], names[34], names[35], names[47], names[100]) == (
        "ApplyEyeMakeup", "Hammering", "HammerThrow", "JumpRope", "YoYo")


def test_unknown_dataset_and_lookup_by_class_count():
    with pytest.raises(ValueError, match="no label list"):
        labels.load("imagenet")
    assert labels.for_classes(174)[0] == "ssv2"
    assert labels.for_classes(7) is None


def test_zoo_conversion_names_its_logits():
    from converter.pipeline import ConvertOptions, class_names
    from converter.variants import arch_config

    assert class_names(arch_config("S", "ssv2"), ConvertOptions(dataset="ssv2")) == labels.load("ssv2")
    assert class_names(arch_config("S", "k400", "pt"), ConvertOptions(stage="pt")) is None
