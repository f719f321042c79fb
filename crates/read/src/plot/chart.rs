//! The chart: a title, then three panels over a shared time axis (mid price; spread; bid and ask
//! depth near the top), each with its unit, value axis, grid and legend, and the times (UTC)
//! under the last panel. Columns where the book was not verified are shaded.
//!
//! What must hold: the plot area has exactly one pixel column per [`Series`] column
//! ([`Layout::columns`]); every label is drawn inside the image (long titles are cut, never
//! spill); an image too small to be readable is refused by [`Layout::new`].

use super::axis;
use super::canvas::{Canvas, Rgb};
use super::series::{ASK_DEPTH, BID_DEPTH, MID, SPREAD, Series};

/// Paper.
pub const BACKGROUND: Rgb = Rgb(255, 255, 255);
/// Text and axes.
pub const INK: Rgb = Rgb(30, 30, 30);
/// Grid lines.
pub const GRID: Rgb = Rgb(232, 232, 232);
/// Plot area border.
pub const FRAME: Rgb = Rgb(120, 120, 120);
/// Shading where the book was not verified.
pub const GAP: Rgb = Rgb(253, 224, 200);
/// The mid price line.
pub const MID_COLOR: Rgb = Rgb(31, 119, 180);
/// The spread line.
pub const SPREAD_COLOR: Rgb = Rgb(148, 103, 189);
/// The bid depth line.
pub const BID_COLOR: Rgb = Rgb(44, 160, 44);
/// The ask depth line.
pub const ASK_COLOR: Rgb = Rgb(214, 39, 40);

/// Where everything goes, for an image of a given size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Font scale (pixels per font cell).
    pub scale: u32,
    /// First pixel column of the plot area.
    pub plot_x0: i32,
    /// Last pixel column of the plot area.
    pub plot_x1: i32,
    /// Each panel's plot area, top and bottom rows (included): mid, spread, depth.
    pub panels: [(i32, i32); 3],
}

impl Layout {
    /// The layout of a `width` × `height` image, or why it is too small.
    pub fn new(width: u32, height: u32) -> Result<Layout, String> {
        let s = (width / 600).min(height / 400).clamp(1, 3);
        let si = s as i32;
        let pad = 4 * si;
        let line = 7 * si;
        let top = pad + 7 * (si + 1) + pad + line + 3 * pad;
        let left = 12 * 6 * si + 2 * pad;
        let right = 4 * pad;
        let bottom = pad + line + pad + line + 2 * pad;
        let header = line + 2 * pad;
        let (w, h) = (width as i32, height as i32);
        let avail = h - top - bottom - 3 * header;
        let plot_w = w - left - right;
        if avail < 90 || plot_w < 60 {
            return Err(format!(
                "a {width}x{height} image is too small for the chart: give at least --width 400 --height 300"
            ));
        }
        let h_mid = avail * 45 / 100;
        let h_spread = avail * 20 / 100;
        let h_depth = avail - h_mid - h_spread;
        let mut y = top + header;
        let mut panels = [(0, 0); 3];
        for (i, ph) in [h_mid, h_spread, h_depth].into_iter().enumerate() {
            panels[i] = (y, y + ph - 1);
            y += ph + header;
        }
        Ok(Layout {
            width,
            height,
            scale: s,
            plot_x0: left,
            plot_x1: left + plot_w - 1,
            panels,
        })
    }

    /// Pixel columns of the plot area.
    pub fn columns(&self) -> usize {
        (self.plot_x1 - self.plot_x0 + 1) as usize
    }
}

/// The words on the chart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    /// The first line (symbol and range).
    pub title: String,
    /// The second line (source, counts, what the shading means).
    pub subtitle: String,
    /// Panel titles, with units: mid, spread, depth.
    pub panels: [String; 3],
    /// Under the time axis.
    pub time_axis: String,
}

struct Panel<'a> {
    series: &'a [(usize, Rgb, &'a str)],
    from_zero: bool,
}

/// Draws the chart of `series` (one column per plot pixel column).
pub fn draw(layout: &Layout, series: &Series, labels: &Labels) -> Canvas {
    let mut c = Canvas::new(layout.width, layout.height, BACKGROUND);
    let s = layout.scale;
    let si = s as i32;
    let pad = 4 * si;
    let w = layout.width as i32;

    // Title (one step larger when it fits) and subtitle.
    let title_scale = if Canvas::text_width(&labels.title, s + 1) as i32 <= w - 2 * pad {
        s + 1
    } else {
        s
    };
    text_fitted(
        &mut c,
        pad,
        pad,
        &labels.title,
        title_scale,
        w - 2 * pad,
        INK,
    );
    let sub_y = pad + 7 * (si + 1) + pad;
    text_fitted(&mut c, pad, sub_y, &labels.subtitle, s, w - 2 * pad, INK);

    let (x0, x1) = (layout.plot_x0, layout.plot_x1);
    let (ticks, step) = {
        let label_w = Canvas::text_width("00:00:00.000", s) as i32 + 6 * pad;
        let max = ((x1 - x0) / label_w.max(1)).max(2) as usize;
        axis::time_ticks(series.from, series.to, max)
    };
    let x_of = |t: i64| -> i32 {
        let span = (series.to - series.from).max(1) as i128;
        x0 + (i128::from(t - series.from) * i128::from(x1 - x0 + 1) / span) as i32
    };

    let panels = [
        Panel {
            series: &[(MID, MID_COLOR, "mid = (best bid + best ask) / 2")],
            from_zero: false,
        },
        Panel {
            series: &[(SPREAD, SPREAD_COLOR, "best ask - best bid")],
            from_zero: true,
        },
        Panel {
            series: &[
                (BID_DEPTH, BID_COLOR, "bids"),
                (ASK_DEPTH, ASK_COLOR, "asks"),
            ],
            from_zero: true,
        },
    ];
    for (i, panel) in panels.iter().enumerate() {
        let (y0, y1) = layout.panels[i];
        // Header: the panel's title on the left, its legend on the right.
        let head_y = y0 - 7 * si - pad;
        c.text(x0, head_y, &labels.panels[i], s, INK);
        let mut legend: Vec<(Rgb, &str, bool)> = panel
            .series
            .iter()
            .map(|&(_, col, name)| (col, name, false))
            .collect();
        if i == 0 {
            legend.push((GAP, "no verified book", true));
        }
        draw_legend(&mut c, x1, head_y, s, &legend);

        // Shading, grid, lines, frame.
        for (k, col) in series.columns.iter().enumerate() {
            if col.gap {
                let x = x0 + k as i32;
                c.fill_rect(x, y0, x, y1, GAP);
            }
        }
        for &t in &ticks {
            let x = x_of(t);
            if x > x0 && x < x1 {
                c.fill_rect(x, y0 + 1, x, y1 - 1, GRID);
            }
        }
        let extent = panel
            .series
            .iter()
            .filter_map(|&(idx, _, _)| series.extent(idx))
            .fold(None, |acc: Option<(f64, f64)>, (lo, hi)| match acc {
                None => Some((lo, hi)),
                Some((a, b)) => Some((a.min(lo), b.max(hi))),
            });
        if let Some((lo, hi)) = extent {
            let (lo, hi) = value_range(lo, hi, panel.from_zero);
            let y_of = |v: f64| -> i32 {
                let f = (v - lo) / (hi - lo);
                (y1 as f64 - f * (y1 - y0) as f64).round() as i32
            };
            let target = (((y1 - y0) / (4 * 7 * si)).max(2)) as usize;
            let (vticks, vstep) = axis::value_ticks(lo, hi, target);
            for v in vticks {
                let y = y_of(v);
                if y < y0 || y > y1 {
                    continue;
                }
                if y > y0 && y < y1 {
                    c.fill_rect(x0 + 1, y, x1 - 1, y, GRID);
                }
                c.fill_rect(x0 - 2 * si, y, x0 - 1, y, FRAME);
                let label = axis::value_label(v, vstep);
                let lw = Canvas::text_width(&label, s) as i32;
                c.text(x0 - 3 * si - pad - lw, y - 7 * si / 2, &label, s, INK);
            }
            let thickness = s.min(2);
            for &(idx, color, _) in panel.series {
                let mut prev: Option<(i32, f64, bool)> = None;
                for (k, col) in series.columns.iter().enumerate() {
                    let x = x0 + k as i32;
                    let Some(a) = col.values[idx] else {
                        prev = None;
                        continue;
                    };
                    if let Some((px, last, pgap)) = prev
                        && !(pgap || col.gap)
                    {
                        c.line(px, y_of(last), x, y_of(a.first), thickness, color);
                    }
                    c.line(x, y_of(a.min), x, y_of(a.max), thickness, color);
                    prev = Some((x, a.last, col.gap));
                }
            }
        } else {
            let msg = "no verified book in this range";
            let mw = Canvas::text_width(msg, s) as i32;
            c.text((x0 + x1 - mw) / 2, (y0 + y1) / 2 - 7 * si / 2, msg, s, INK);
        }
        c.stroke_rect(x0 - 1, y0 - 1, x1 + 1, y1 + 1, FRAME);
        // Time ticks under every panel; labels under the last.
        for &t in &ticks {
            let x = x_of(t);
            if x >= x0 && x <= x1 {
                c.fill_rect(x, y1 + 2, x, y1 + 1 + 2 * si, FRAME);
            }
        }
    }

    let (_, bottom) = layout.panels[2];
    let label_y = bottom + 2 + 2 * si + pad;
    for &t in &ticks {
        let x = x_of(t);
        if x < x0 || x > x1 {
            continue;
        }
        let label = axis::time_label(t, step);
        let lw = Canvas::text_width(&label, s) as i32;
        let lx = (x - lw / 2).clamp(0, w - lw);
        c.text(lx, label_y, &label, s, INK);
    }
    let axis_y = label_y + 7 * si + pad;
    let aw = Canvas::text_width(&labels.time_axis, s) as i32;
    text_fitted(
        &mut c,
        ((x0 + x1 - aw) / 2).max(pad),
        axis_y,
        &labels.time_axis,
        s,
        w - 2 * pad,
        INK,
    );
    c
}

/// The value range shown: a little room above and below (from zero for magnitudes).
fn value_range(lo: f64, hi: f64, from_zero: bool) -> (f64, f64) {
    let (lo, hi) = if from_zero {
        (0f64.min(lo), hi)
    } else {
        (lo, hi)
    };
    let span = hi - lo;
    if span <= 0.0 || !span.is_finite() {
        let d = if hi.abs() > 0.0 {
            hi.abs() * 0.001
        } else {
            1.0
        };
        return (if from_zero { 0f64.min(lo) } else { lo - d }, hi + d);
    }
    let margin = span * 0.06;
    (if from_zero { lo } else { lo - margin }, hi + margin)
}

/// A legend, right-aligned to `right`: a swatch and a name per entry.
fn draw_legend(c: &mut Canvas, right: i32, y: i32, s: u32, entries: &[(Rgb, &str, bool)]) {
    let si = s as i32;
    let swatch = 5 * 3 * si;
    let mut x = right;
    for &(color, name, filled) in entries.iter().rev() {
        let nw = Canvas::text_width(name, s) as i32;
        x -= nw;
        c.text(x, y, name, s, INK);
        x -= 2 * si + swatch;
        let mid = y + 7 * si / 2;
        if filled {
            c.fill_rect(x, y, x + swatch, y + 7 * si - 1, color);
            c.stroke_rect(x, y, x + swatch, y + 7 * si - 1, FRAME);
        } else {
            c.fill_rect(x, mid - si / 2 - 1, x + swatch, mid + si / 2, color);
        }
        x -= 6 * si;
    }
}

/// Text cut to `max_width` pixels (with `...` when cut).
fn text_fitted(c: &mut Canvas, x: i32, y: i32, text: &str, s: u32, max_width: i32, color: Rgb) {
    if Canvas::text_width(text, s) as i32 <= max_width {
        c.text(x, y, text, s, color);
        return;
    }
    let mut cut: String = text.to_owned();
    while !cut.is_empty() && Canvas::text_width(&format!("{cut}..."), s) as i32 > max_width {
        cut.pop();
    }
    c.text(x, y, &format!("{cut}..."), s, color);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::series::{Agg, PixelColumn, SERIES};

    #[test]
    fn layouts_fit_the_image_and_small_images_are_refused() {
        for (w, h) in [(1200, 800), (640, 480), (400, 300), (3000, 2000)] {
            let l = Layout::new(w, h).unwrap();
            assert!(l.plot_x0 > 0 && (l.plot_x1 as u32) < w, "{w}x{h}");
            let mut prev = 0;
            for (y0, y1) in l.panels {
                assert!(y0 > prev && y1 > y0 + 20, "{w}x{h}: {:?}", l.panels);
                prev = y1;
            }
            assert!((prev as u32) < h, "{w}x{h}");
        }
        assert!(Layout::new(200, 100).is_err());
    }

    #[test]
    fn lines_are_drawn_where_the_values_are_and_gaps_are_shaded() {
        let layout = Layout::new(640, 480).unwrap();
        let n = layout.columns();
        let mut columns = vec![PixelColumn::default(); n];
        for (k, col) in columns.iter_mut().enumerate() {
            if k >= n / 2 && k < n / 2 + 10 {
                col.gap = true;
                continue;
            }
            let v = 100.0 + k as f64;
            let agg = Some(Agg {
                min: v,
                max: v,
                first: v,
                last: v,
            });
            col.values = [agg; SERIES];
        }
        let series = Series {
            from: 0,
            to: 60_000_000,
            columns,
        };
        let labels = Labels {
            title: "BTC/USD".into(),
            subtitle: "test".into(),
            panels: [
                "mid (USD)".into(),
                "spread (USD)".into(),
                "depth (BTC)".into(),
            ],
            time_axis: "time (UTC)".into(),
        };
        let c = draw(&layout, &series, &labels);
        let (y0, y1) = layout.panels[0];
        let has = |x: i32, color: Rgb| (y0..=y1).any(|y| c.get(x, y) == Some(color));
        // The rising mid line: near the bottom at the left, near the top at the right.
        let x_first = layout.plot_x0 + 2;
        let x_last = layout.plot_x1 - 2;
        let y_at = |x: i32| (y0..=y1).find(|&y| c.get(x, y) == Some(MID_COLOR)).unwrap();
        assert!(y_at(x_first) > y_at(x_last), "the line rises");
        let gap_x = layout.plot_x0 + n as i32 / 2 + 5;
        assert!(has(gap_x, GAP), "the gap is shaded");
        assert!(!has(gap_x, MID_COLOR), "no line across the gap");
        // The depth panel has both lines.
        let (d0, d1) = layout.panels[2];
        let count = |color: Rgb| {
            (d0..=d1)
                .flat_map(|y| (layout.plot_x0..=layout.plot_x1).map(move |x| (x, y)))
                .filter(|&(x, y)| c.get(x, y) == Some(color))
                .count()
        };
        assert!(count(ASK_COLOR) > n / 2, "asks drawn");
    }
}
