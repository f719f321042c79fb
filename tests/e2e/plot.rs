//! `krakenbook plot` end to end, on data collected from the simulator into a real TimescaleDB
//! ([`crate::recording`]): the PNG decodes, has the size asked for, and shows the lines and the
//! gaps where the layout puts them.

use std::path::Path;

use krakenbook::plot::canvas::Rgb;
use krakenbook::plot::chart::{ASK_COLOR, BID_COLOR, GAP, Layout, MID_COLOR, SPREAD_COLOR};

use crate::export::{device, is_char_device, is_fifo, mkfifo, names};
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

// ---- Output files -------------------------------------------------------------------------

fn plot_output(rec: &Recording, symbol: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let (from, to) = rec.all();
    krakenbook()
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
        .unwrap()
}

fn failure(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "succeeded");
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// `plot -o p.jpg` wrote a PNG under that name. Anything but `.png` is refused, with nothing
/// written.
#[tokio::test]
async fn plot_refuses_a_name_that_is_not_png() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    for name in ["p.jpg", "p.svg", "p", "p.png.gz"] {
        let err = failure(&plot_output(rec, "BTC/USD", &dir.path().join(name), &[]));
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(
            err.starts_with("error: plot writes PNG images: name the file .png"),
            "{name}: {err}"
        );
    }
    assert!(names(dir.path()).is_empty());
    // Any case of the extension.
    plot(rec, "BTC/USD", &dir.path().join("p.PNG"), &[]);
    assert_eq!(names(dir.path()), ["p.PNG"]);
}

/// A device is written in place: `/dev/full` fails on one line and stays a device, a null
/// device takes the image; a FIFO streams it to its reader.
#[tokio::test]
async fn plot_writes_devices_and_fifos_in_place() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let full = device(dir.path(), 7);
    let err = failure(&plot_output(rec, "BTC/USD", &full, &[]));
    assert_eq!(
        err,
        format!(
            "error: cannot write {}: No space left on device (os error 28)",
            full.display()
        )
    );
    assert!(is_char_device(&full));
    let null = device(dir.path(), 3);
    let summary = plot(rec, "BTC/USD", &null, &[]);
    assert!(summary.contains("PNG"), "{summary}");
    assert!(is_char_device(&null));

    let fifo = dir.path().join("chart.png");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    plot(
        rec,
        "BTC/USD",
        &fifo,
        &["--width", "700", "--height", "450"],
    );
    let png = reader.join().unwrap();
    let file = dir.path().join("copy.png");
    std::fs::write(&file, &png).unwrap();
    assert_eq!(decode(&file).0, 700);
    assert!(is_fifo(&fifo));
    let mut want = vec!["chart.png", "copy.png"];
    for own in [&full, &null] {
        if own.starts_with(dir.path()) {
            want.push(if own.ends_with("full") {
                "full"
            } else {
                "null"
            });
        }
    }
    want.sort();
    assert_eq!(names(dir.path()), want);
}

/// Through a symlink, the file it points to is replaced and the link kept.
#[tokio::test]
async fn plot_through_a_symlink_replaces_the_file_it_points_to_and_keeps_the_link() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let charts = dir.path().join("charts");
    std::fs::create_dir(&charts).unwrap();
    std::fs::write(charts.join("btc.png"), "old").unwrap();
    let link = dir.path().join("latest.png");
    std::os::unix::fs::symlink("charts/btc.png", &link).unwrap();
    plot(
        rec,
        "BTC/USD",
        &link,
        &["--width", "700", "--height", "450"],
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(decode(&charts.join("btc.png")).0, 700);
    assert_eq!(names(&charts), ["btc.png"]);
    assert_eq!(names(dir.path()), ["charts", "latest.png"]);
}

/// `--depth-levels` deeper than the recorded books summed them without a word; it is clamped,
/// with a warning, and the panel says what it sums.
#[tokio::test]
async fn plot_depth_levels_beyond_the_recording_are_clamped_with_a_warning() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let out = plot_output(
        rec,
        "BTC/USD",
        &dir.path().join("deep.png"),
        &["--depth-levels", "1000"],
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "warning: --depth-levels 1000 is deeper than the books recorded (25 levels a side): the depth panel sums 25"
    );
}
