"""Japanese text in matplotlib figures, offline.

matplotlib's default font has no kana or kanji, so Japanese labels render as boxes.
``use_japanese_font`` points matplotlib at a CJK font installed on the machine
(Debian: ``fonts-noto-cjk``; also IPAex/IPA and Takao fonts) and returns its name.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CJK_FONTS", "use_japanese_font"]

#: Font family names tried in order.
CJK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Serif CJK JP",
    "IPAexGothic",
    "IPAGothic",
    "TakaoGothic",
    "VL Gothic",
)


def use_japanese_font() -> str:
    """Make the first installed CJK font matplotlib's default sans-serif; its name.

    Raises ``RuntimeError`` naming the Debian package to install when there is none.
    """
    import matplotlib as mpl
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in CJK_FONTS:
        if name in installed:
            break
    else:
        # fonts installed after matplotlib built its cache: add them from the system
        for path in font_manager.findSystemFonts():
            lowered = Path(path).name.lower()
            if "cjk" in lowered or lowered.startswith(("ipa", "takao", "vl-")):
                font_manager.fontManager.addfont(path)
        installed = {f.name for f in font_manager.fontManager.ttflist}
        found = [n for n in CJK_FONTS if n in installed]
        if not found:
            raise RuntimeError(
                "no Japanese font found / 日本語フォントがありません: "
                "apt-get install fonts-noto-cjk"
            )
        name = found[0]
    mpl.rcParams["font.family"] = "sans-serif"
    mpl.rcParams["font.sans-serif"] = [name, *mpl.rcParams["font.sans-serif"]]
    mpl.rcParams["axes.unicode_minus"] = False
    return name
