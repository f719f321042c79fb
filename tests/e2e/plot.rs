//! `krakenbook plot` end to end, on data collected from the simulator into a real TimescaleDB
//! ([`crate::recording`]): the PNG decodes, has the size asked for, and shows the lines and the
//! gaps where the layout puts them.

use std::path::Path;

use krakenbook::plot::canvas::Rgb;
use krakenbook::plot::chart::{ASK_COLOR, BID_COLOR, GAP, Layout, MID_COLOR, SPREAD_COLOR};

use crate::recording::{Recording, recording};
use crate::support::krakenbook;

/// Decodes a PNG: (width, height, RGB pixels).
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn plot(rec: &Recording, symbol: &str, out: &Path, extra: &[&str]) -> String {
    let (from, to) = rec.all();
    let o = krakenbook()
        .args([
            "plot",
            symbol,
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
        ])
        .args(["--database-url", &rec.url, "-o", out.to_str().unwrap()])
        .args(extra)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Pixel columns of the plot area (in `rows`) holding `color`.
fn columns_with(pixels: &[u8], width: u32, layout: &Layout, rows: (i32, i32), color: Rgb) -> usize {
    (layout.plot_x0..=layout.plot_x1)
        .filter(|&x| {
            (rows.0..=rows.1).any(|y| {
                let i = (y as usize * width as usize + x as usize) * 3;
                Rgb(pixels[i], pixels[i + 1], pixels[i + 2]) == color
            })
        })
        .count()
}

#[tokio::test]
async fn plot_writes_a_png_of_the_size_asked_with_every_series_drawn_and_the_gap_shaded() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    for (w, h) in [(1200u32, 800u32), (700, 450)] {
        let out = dir.path().join(format!("btc-{w}.png"));
        let extra = if w == 1200 {
            vec![]
        } else {
            vec!["--width", "700", "--height", "450", "--depth-levels", "5"]
        };
        let summary = plot(rec, "BTC/USD", &out, &extra);
        assert!(summary.contains(&format!("{w}x{h} PNG")), "{summary}");
        let (width, height, pixels) = decode(&out);
        assert_eq!((width, height), (w, h));
        let layout = Layout::new(w, h).unwrap();
        let n = layout.columns();
        let [mid, spread, depth] = layout.panels;
        // The lines fill most of the plot (the book is verified most of the time) and each
        // stays in its panel.
        for (panel, color, what) in [
            (mid, MID_COLOR, "mid"),
            (spread, SPREAD_COLOR, "spread"),
            (depth, BID_COLOR, "bid depth"),
            (depth, ASK_COLOR, "ask depth"),
        ] {
            let drawn = columns_with(&pixels, width, &layout, panel, color);
            assert!(drawn > n * 6 / 10, "{what}: {drawn} of {n} columns");
        }
        assert_eq!(
            columns_with(&pixels, width, &layout, spread, MID_COLOR),
            0,
            "the mid line stays in its panel"
        );
        // The lost connection and the time before the first snapshot are shaded.
        let shaded = columns_with(&pixels, width, &layout, mid, GAP);
        assert!(
            shaded > 0 && shaded < n / 2,
            "{shaded} of {n} columns shaded"
        );
        // The mid line varies: it is not a flat line.
        let rows_with_mid = (mid.0..=mid.1)
            .filter(|&y| {
                (layout.plot_x0..=layout.plot_x1).any(|x| {
                    let i = (y as usize * width as usize + x as usize) * 3;
                    Rgb(pixels[i], pixels[i + 1], pixels[i + 2]) == MID_COLOR
                })
            })
            .count();
        assert!(
            rows_with_mid > 10,
            "the mid line spans {rows_with_mid} rows"
        );
    }
}

#[tokio::test]
async fn plot_of_a_pair_that_never_changes_draws_flat_lines() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mina.png");
    plot(
        rec,
        "MINA/GBP",
        &out,
        &["--width", "800", "--height", "600"],
    );
    let (width, height, pixels) = decode(&out);
    assert_eq!((width, height), (800, 600));
    let layout = Layout::new(800, 600).unwrap();
    let mid = layout.panels[0];
    let rows: Vec<i32> = (mid.0..=mid.1)
        .filter(|&y| {
            (layout.plot_x0..=layout.plot_x1).any(|x| {
                let i = (y as usize * width as usize + x as usize) * 3;
                Rgb(pixels[i], pixels[i + 1], pixels[i + 2]) == MID_COLOR
            })
        })
        .collect();
    // A constant value: one line, at most the line's thickness high.
    assert!(!rows.is_empty() && rows.len() <= 2, "{rows:?}");
}
