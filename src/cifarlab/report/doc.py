"""A tiny document model rendered twice: self-contained HTML and Markdown with PNG files beside it.

Inline text uses two marks only: **bold** and `code`; everything else is escaped.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Union


@dataclass
class Heading:
    level: int  # 2 = section, 3 = subsection
    text: str
    anchor: str = ""


@dataclass
class Para:
    text: str
    kind: str = ""  # "" | "note" (muted, small) | "warn" (callout)


@dataclass
class Bullets:
    items: list[str]


class Column(NamedTuple):
    name: str
    align: str = "r"  # l (text), r (numbers), w (wrapping text)


@dataclass
class Table:
    columns: list[Column]
    rows: list[list[str]]  # cells in column order
    caption: str = ""
    row_notes: list[str] = field(default_factory=list)  # small text under each row's first cell

    def __post_init__(self) -> None:
        # A cell too many or too few would shift every cell after it under the wrong header.
        bad = [r for r in self.rows if len(r) != len(self.columns)]
        if bad:
            raise ValueError(f"table rows need {len(self.columns)} cells, got {len(bad[0])}: {bad[0]}")


@dataclass
class Image:
    name: str  # file stem in report-files/
    png: bytes
    alt: str
    caption: str = ""


@dataclass
class Pre:
    text: str
    caption: str = ""


@dataclass
class Details:
    """Collapsed in HTML (<details>), a plain subsection in Markdown."""

    summary: str
    blocks: list["Block"] = field(default_factory=list)


Block = Union[Heading, Para, Bullets, Table, Image, Pre, Details]


@dataclass
class Document:
    title: str
    facts: list[tuple[str, str]]  # header facts: (label, value)
    blocks: list[Block]


# ---------------------------------------------------------------------------------------------
# HTML

CSS = """
:root { --fg: #1d2430; --muted: #5b6575; --line: #dfe3ea; --soft: #f5f7fa; --accent: #2454a6; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--fg); line-height: 1.5;
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 0 28px 64px; }
header { background: #1f2b3d; color: #fff; padding: 26px 0 20px; }
header .wrap { max-width: 1120px; margin: 0 auto; padding: 0 28px; }
header h1 { margin: 0 0 10px; font-size: 26px; font-weight: 650; letter-spacing: -0.01em; }
header h1 small { font-weight: 400; color: #aab6c8; font-size: 15px; margin-left: 10px; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 26px; margin: 0; font-size: 13.5px; }
.facts div { display: flex; gap: 6px; }
.facts dt { color: #aab6c8; }
.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
nav { border-bottom: 1px solid var(--line); background: var(--soft); font-size: 13.5px; }
nav .wrap { max-width: 1120px; margin: 0 auto; padding: 8px 28px; display: flex; flex-wrap: wrap; gap: 4px 18px; }
nav a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
h2 { font-size: 20px; margin: 38px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 18px; margin: 34px 0 8px; padding-top: 14px; border-top: 1px solid var(--line); }
h2 + h3 { border-top: 0; padding-top: 0; }
h3 code { font-size: 16px; }
p { margin: 8px 0; }
p.note { color: var(--muted); font-size: 13px; }
p.warn { background: #fff6e0; border-left: 4px solid #e0a100; padding: 8px 12px; font-size: 14px; }
ul.insights { padding-left: 20px; margin: 8px 0; }
ul.insights li { margin: 6px 0; }
code { font: 0.92em/1.3 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
       background: var(--soft); padding: 1px 4px; border-radius: 3px; }
.table-wrap { overflow-x: auto; margin: 10px 0 2px; }
.table-wrap + p.note { margin-top: 4px; }
table { border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { background: var(--soft); font-weight: 600; border-bottom: 2px solid #c9d0db; vertical-align: bottom; }
tbody tr:nth-child(even) td { background: #fafbfc; }
tbody tr:hover td { background: #eef3fb; }
td.r, th.r { text-align: right; }
td.l, th.l, td.w, th.w { text-align: left; }
td.w { white-space: normal; min-width: 140px; color: var(--muted); }
td .sub { font-size: 12px; color: var(--muted); white-space: normal; max-width: 260px; font-weight: 400; }
figure { margin: 14px 0 18px; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 4px; padding: 10px 12px;
      font: 12.5px/1.45 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; overflow-x: auto; }
details { margin: 10px 0; border: 1px solid var(--line); border-radius: 4px; padding: 6px 12px; }
details summary { cursor: pointer; color: var(--accent); font-weight: 500; }
details[open] summary { margin-bottom: 6px; }
section.experiment { margin-top: 12px; }
footer { color: var(--muted); font-size: 12px; margin-top: 48px; border-top: 1px solid var(--line); padding-top: 10px; }
"""

_INLINE = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`")


def _inline(text: str, plain: Callable[[str], str], bold: Callable[[str], str], code: Callable[[str], str]) -> str:
    """`text` with each **x** rendered by `bold`, each `x` by `code` and the text between by `plain`."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(plain(text[pos:m.start()]))
        out.append(bold(m.group(1)) if m.group(1) is not None else code(m.group(2)))
        pos = m.end()
    out.append(plain(text[pos:]))
    return "".join(out)


def inline_html(text: str) -> str:
    """Escape `text`, turning **x** into <strong> and `x` into <code>."""
    return _inline(text, html.escape, lambda x: f"<strong>{inline_html(x)}</strong>",
                   lambda x: f"<code>{html.escape(x)}</code>")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _html_row(row: list[str], align: str, note: str) -> str:
    cells = [f'<td class="{a}">{inline_html(v)}</td>' for v, a in zip(row, align)]
    if note:  # small text under the first cell
        cells[0] = cells[0].replace("</td>", f'<div class="sub">{inline_html(note)}</div></td>')
    return "<tr>" + "".join(cells) + "</tr>"


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        anchor = f' id="{html.escape(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{inline_html(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        cls = f' class="{block.kind}"' if block.kind else ""
        return f"<p{cls}>{inline_html(block.text)}</p>"
    if isinstance(block, Bullets):
        items = "".join(f"<li>{inline_html(i)}</li>" for i in block.items)
        return f'<ul class="insights">{items}</ul>'
    if isinstance(block, Table):
        align = [c.align for c in block.columns]
        head = "".join(f'<th class="{c.align}">{inline_html(c.name)}</th>' for c in block.columns)
        body = "".join(_html_row(row, align, note)
                       for row, note in zip(block.rows, block.row_notes or [""] * len(block.rows)))
        caption = f'<p class="note">{inline_html(block.caption)}</p>' if block.caption else ""
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        return f'<div class="table-wrap">{table}</div>{caption}'
    if isinstance(block, Image):
        caption = f"<figcaption>{inline_html(block.caption)}</figcaption>" if block.caption else ""
        return (f'<figure><img src="{data_uri(block.png)}" alt="{html.escape(block.alt)}">{caption}</figure>')
    if isinstance(block, Pre):
        caption = f'<p class="note">{inline_html(block.caption)}</p>' if block.caption else ""
        return f"{caption}<pre>{html.escape(block.text)}</pre>"
    if isinstance(block, Details):
        inner = "\n".join(_html_block(b) for b in block.blocks)
        return f"<details><summary>{inline_html(block.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"unknown block {block!r}")


def render_html(doc: Document) -> str:
    """One self-contained HTML page: inline CSS, images as data URIs, no scripts, no network."""
    facts = "".join(f"<div><dt>{html.escape(k)}</dt><dd>{inline_html(v)}</dd></div>" for k, v in doc.facts)
    toc = "".join(f'<a href="#{html.escape(b.anchor)}">{inline_html(b.text)}</a>'
                  for b in doc.blocks if isinstance(b, Heading) and b.level == 2 and b.anchor)
    body = "\n".join(_html_block(b) for b in doc.blocks)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(doc.title)} - cifarlab report</title>
<style>{CSS}</style>
</head>
<body>
<header><div class="wrap">
<h1>{html.escape(doc.title)}<small>cifarlab study report</small></h1>
<dl class="facts">{facts}</dl>
</div></header>
<nav><div class="wrap">{toc}</div></nav>
<main>
{body}
<footer>Written by <code>cifarlab report</code>.
Accuracies are final-epoch values; mean &plusmn; std over seeds.</footer>
</main>
</body>
</html>
"""


# ---------------------------------------------------------------------------------------------
# Markdown


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def _md_escape(text: str) -> str:
    """Plain text for Markdown: no HTML, no emphasis, links or table breaks of its own, on one line."""
    text = _MD_SPECIAL.sub(r"\\\1", " ".join(text.splitlines()))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def inline_md(text: str, cell: bool = False) -> str:
    """`text` for Markdown, as inline_html does for HTML: **x** and `x` kept, everything else escaped."""
    # A code span shows its text as is; in a table cell '|' still needs its escape.
    return _inline(" ".join(text.splitlines()), _md_escape, lambda x: f"**{inline_md(x, cell)}**",
                   lambda x: f"`{x.replace('|', chr(92) + '|') if cell else x}`")


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so the text cannot end it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _md_block(block: Block, files: dict[str, bytes], folder: str) -> str:
    if isinstance(block, Heading):
        anchor = f'<a id="{html.escape(block.anchor)}"></a>\n' if block.anchor else ""
        return f"{anchor}{'#' * block.level} {inline_md(block.text)}"
    if isinstance(block, Para):
        text = inline_md(block.text)
        return {"warn": f"> {text}", "note": f"*{text}*"}.get(block.kind, text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {inline_md(i)}" for i in block.items)
    if isinstance(block, Table):
        lines = ["| " + " | ".join(inline_md(c.name, cell=True) for c in block.columns) + " |",
                 "|" + "|".join("---:" if c.align == "r" else ":---" for c in block.columns) + "|"]
        notes = block.row_notes or [""] * len(block.rows)
        lines += ["| " + " | ".join(inline_md(v + (f" \u2013 {note}" if j == 0 and note else ""), cell=True)
                                    for j, v in enumerate(row)) + " |" for row, note in zip(block.rows, notes)]
        if block.caption:
            lines += ["", f"*{inline_md(block.caption)}*"]
        return "\n".join(lines)
    if isinstance(block, Image):
        name = f"{block.name}.png"
        files[name] = block.png
        caption = f"\n\n*{inline_md(block.caption)}*" if block.caption else ""
        return f"![{_md_escape(block.alt)}]({folder}/{name}){caption}"
    if isinstance(block, Pre):
        caption = f"*{inline_md(block.caption)}*\n\n" if block.caption else ""
        fence = _fence(block.text)
        return f"{caption}{fence}\n{block.text.rstrip()}\n{fence}"
    if isinstance(block, Details):
        inner = "\n\n".join(_md_block(b, files, folder) for b in block.blocks)
        return f"**{inline_md(block.summary)}**\n\n{inner}"
    raise TypeError(f"unknown block {block!r}")


def render_markdown(doc: Document, folder: str) -> tuple[str, dict[str, bytes]]:
    """Markdown text and the PNG files it links to (names relative to `folder`)."""
    files: dict[str, bytes] = {}
    facts = " \u00b7 ".join(f"**{_md_escape(k)}:** {inline_md(v)}" for k, v in doc.facts)
    head = [f"# {inline_md(doc.title)}", facts]
    body = [_md_block(b, files, folder) for b in doc.blocks]
    return "\n\n".join(head + body) + "\n", files
