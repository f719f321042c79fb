//! Axis ticks and labels: round numbers (1, 2 or 5 times a power of ten) for values, round
//! durations (1 ms to 7 days) for times, labelled in UTC.
//!
//! What must hold: ticks lie inside the range asked for, are evenly spaced, and their labels
//! show as many decimals as the step needs and no more.

use crate::time::Timestamp;

/// Round-number ticks inside `[min, max]`, about `target` of them and at least two when the
/// range allows: (ticks, step). The step is 1, 2 or 5 times a power of ten, the one closest to
/// `(max - min) / target`.
pub fn value_ticks(min: f64, max: f64, target: usize) -> (Vec<f64>, f64) {
    if !(min.is_finite() && max.is_finite()) || max <= min {
        return (vec![min], 1.0);
    }
    let raw = (max - min) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .min_by(|a, b| {
            let da = (a / raw).ln().abs();
            let db = (b / raw).ln().abs();
            da.total_cmp(&db)
        })
        .unwrap_or(mag);
    let mut ticks = ticks_at(min, max, step, target);
    // Too coarse for two ticks: the next smaller round step (5 → 2 → 1 → 0.5 ...).
    for _ in 0..6 {
        if ticks.len() >= 2 {
            break;
        }
        let lead = step / 10f64.powf(step.log10().floor());
        step *= if (lead - 2.0).abs() < 1e-9 {
            0.5
        } else if (lead - 5.0).abs() < 1e-9 {
            0.4
        } else {
            0.5
        };
        ticks = ticks_at(min, max, step, target);
    }
    (ticks, step)
}

fn ticks_at(min: f64, max: f64, step: f64, target: usize) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut k = (min / step).ceil();
    // Bounded: the step is at least a tenth of (max - min) / target after a few halvings.
    while k * step <= max + step * 1e-9 && ticks.len() <= target * 40 {
        ticks.push(k * step);
        k += 1.0;
    }
    ticks
}

/// A value label with the decimals `step` needs (`62800`, `0.25`, `1.5`).
pub fn value_label(v: f64, step: f64) -> String {
    let decimals = if step > 0.0 && step < 1.0 {
        (-step.log10().floor()) as usize + usize::from(is_fractional_step(step))
    } else {
        0
    };
    if v.abs() < step * 1e-9 {
        return "0".to_owned();
    }
    format!("{v:.decimals$}")
}

/// Whether the step's leading digit needs one more decimal (2.5 × 10^k does; 1, 2, 5 do not).
fn is_fractional_step(step: f64) -> bool {
    let scaled = step / 10f64.powf(step.log10().floor());
    (scaled - scaled.round()).abs() > 1e-6
}

/// Durations a time axis may step by, in microseconds.
const TIME_STEPS: [i64; 26] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    15_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
    300_000_000,
    600_000_000,
    900_000_000,
    1_800_000_000,
    3_600_000_000,
    10_800_000_000,
    21_600_000_000,
    86_400_000_000,
    604_800_000_000,
];

/// Ticks at round instants in `[from, to]` (microseconds since the epoch), at most `max_ticks`:
/// (ticks, step).
pub fn time_ticks(from: i64, to: i64, max_ticks: usize) -> (Vec<i64>, i64) {
    let span = (to - from).max(1);
    let step = TIME_STEPS
        .iter()
        .copied()
        .find(|s| span / s < max_ticks.max(1) as i64)
        .unwrap_or(TIME_STEPS[TIME_STEPS.len() - 1]);
    let first = from.div_euclid(step) * step + if from.rem_euclid(step) == 0 { 0 } else { step };
    let mut ticks = Vec::new();
    let mut t = first;
    while t <= to && ticks.len() <= max_ticks {
        ticks.push(t);
        t += step;
    }
    (ticks, step)
}

/// A time label for a tick of `step`: `HH:MM:SS.mmm`, `HH:MM:SS`, `HH:MM` or `MM-DD`, UTC.
pub fn time_label(micros: i64, step: i64) -> String {
    let text = Timestamp::from_unix_nanos(micros.saturating_mul(1000)).to_string();
    // RFC 3339 as Timestamp prints it: YYYY-MM-DDTHH:MM:SS.ffffffZ.
    let part = |a: usize, b: usize| text.get(a..b).unwrap_or("").to_owned();
    if step < 1_000_000 {
        part(11, 23)
    } else if step < 60_000_000 {
        part(11, 19)
    } else if step < 86_400_000_000 {
        part(11, 16)
    } else {
        part(5, 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_ticks_are_round_and_inside() {
        let cases: [(f64, f64, usize, &[f64], f64); 5] = [
            (
                62_791.3,
                62_848.9,
                5,
                &[62_800.0, 62_810.0, 62_820.0, 62_830.0, 62_840.0],
                10.0,
            ),
            (0.0, 1.0, 4, &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 0.2),
            // A coarse target still gives two ticks.
            (907_320.0, 907_790.0, 1, &[907_400.0, 907_600.0], 200.0),
            (0.013, 0.071, 3, &[0.02, 0.04, 0.06], 0.02),
            (3.0, 3.0, 5, &[3.0], 1.0),
        ];
        for (min, max, target, want, want_step) in cases {
            let (ticks, step) = value_ticks(min, max, target);
            assert!(
                (step - want_step).abs() < 1e-12,
                "{min}..{max}: step {step}"
            );
            assert_eq!(ticks.len(), want.len(), "{min}..{max}: {ticks:?}");
            for (t, w) in ticks.iter().zip(want) {
                assert!((t - w).abs() < 1e-9, "{min}..{max}: {ticks:?}");
            }
        }
    }

    #[test]
    fn value_labels_show_the_decimals_the_step_needs() {
        let cases = [
            (62_800.0, 10.0, "62800"),
            (0.5, 0.5, "0.5"),
            (0.04, 0.02, "0.04"),
            (1.25, 0.25, "1.25"),
            (1e-13, 0.1, "0"),
            (0.0, 0.0002, "0"),
        ];
        for (v, step, want) in cases {
            assert_eq!(value_label(v, step), want, "{v} by {step}");
        }
    }

    #[test]
    fn time_ticks_fall_on_round_instants() {
        let t0 = Timestamp::parse("2026-11-24T10:00:07Z")
            .unwrap()
            .unix_micros();
        // 20 seconds, at most 6 ticks: every 5 s.
        let (ticks, step) = time_ticks(t0, t0 + 20_000_000, 6);
        assert_eq!(step, 5_000_000);
        let labels: Vec<String> = ticks.iter().map(|&t| time_label(t, step)).collect();
        assert_eq!(labels, ["10:00:10", "10:00:15", "10:00:20", "10:00:25"]);
        // A day, at most 8 ticks: every 6 hours.
        let day = Timestamp::parse("2026-11-24").unwrap().unix_micros();
        let (ticks, step) = time_ticks(day, day + 86_400_000_000, 8);
        assert_eq!(step, 21_600_000_000);
        assert_eq!(time_label(ticks[1], step), "06:00");
        // Under a second: milliseconds.
        assert_eq!(time_label(t0 + 250_000, 50_000), "10:00:07.250");
        // Weeks: the date.
        assert_eq!(time_label(day, 604_800_000_000), "11-24");
    }
}
