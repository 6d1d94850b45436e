"""The style sheet of invpbr's pages (report.html, index.html, gradient images)."""

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.2em 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em;
  border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.4em 0; } td, th { padding: 3px 8px;
  border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status { display: inline-block; padding: 1px 8px; border-radius: 4px; color: #fff; }
.completed { background: #2a8a3a; } .stopped { background: #3a6ab0; }
.interrupted, .diverged, .failed, .timeout, .worse { background: #b03a2e; }
.warn { background: #fff4e0; border-left: 4px solid #e08a00; padding: 4px 10px; margin: 4px 0; }
.note { background: #eef4ff; border-left: 4px solid #3a6ab0; padding: 4px 10px; margin: 4px 0; }
figure { display: inline-block; margin: 4px 8px 8px 0; vertical-align: top; white-space: normal; }
td.views { white-space: nowrap; overflow-x: auto; }
figcaption { font-size: 12px; color: #555; max-width: 150px; }
img.px { image-rendering: pixelated; width: 140px; height: auto; border: 1px solid #ccc; }
img.plot { max-width: 520px; border: 1px solid #eee; }
.swatch { display: inline-block; width: 34px; height: 22px; border: 1px solid #888;
  vertical-align: middle; margin-right: 4px; }
.better { color: #2a8a3a; } .worsened { color: #b03a2e; font-weight: bold; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
"""
