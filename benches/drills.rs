//! Load drills on real time: every scenario of `benches/drill/mod.rs` for the bare service,
//! this crate's stack (with and without its degrade layer stepping down) and
//! tower-resilience's composition, one after another in one run.
//!
//! Run with `cargo bench --bench drills --features mock` (add `--features mock,redis` for the
//! Redis drill, which starts a `redis-server` of its own). `DRILL_SECONDS` sets each run's
//! length (default 10); `DRILL_SCENARIO` runs only the scenarios whose name contains it.
//! Prints the table of `BENCHMARKS.md` and writes it, with the plot of the outage drill
//! (when it ran), to `target/drills/` (`table.md`, `outage.svg`; under `CARGO_TARGET_DIR`
//! when it is set).

mod drill;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use drill::{Contestant, Figures, Options, Report, Scenario, Tier};
use plotters::prelude::*;

fn main() {
    // `cargo bench` passes `--bench`; a name filter is not supported, every drill runs.
    let seconds = std::env::var("DRILL_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(10);
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");

    #[allow(unused_mut)]
    let mut scenarios = Scenario::all(duration);
    #[cfg(feature = "redis")]
    scenarios.push(Scenario::redis(duration));
    // `DRILL_SCENARIO` keeps the scenarios whose name contains it (e.g. "outage").
    if let Ok(only) = std::env::var("DRILL_SCENARIO") {
        scenarios.retain(|s| s.name.contains(only.as_str()));
    }

    // Cargo's target directory (`CARGO_TARGET_DIR` when set), as the rest of the build.
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
            PathBuf::from,
        )
        .join("drills");
    std::fs::create_dir_all(&out).expect("target/drills");
    let mut table = header(duration);
    let mut outage = Vec::new();
    for scenario in &scenarios {
        for contestant in Contestant::ALL {
            eprintln!("drill: {} / {}", scenario.name, contestant.label());
            let report = runtime.block_on(drill::run(*scenario, contestant, Options::default()));
            row(&mut table, scenario, contestant, &report.figures());
            if scenario.name == "outage 30%" && contestant != Contestant::OursNoDegrade {
                outage.push(report);
            }
        }
    }
    print!("{table}");
    std::fs::write(out.join("table.md"), &table).expect("target/drills/table.md");
    eprintln!("wrote {}", out.join("table.md").display());
    if !outage.is_empty() {
        let svg = out.join("outage.svg");
        plot(&outage, &svg).expect("the outage plot");
        eprintln!("wrote {}", svg.display());
    }
}

fn header(duration: Duration) -> String {
    format!(
        "Primary capacity {:.0} requests/s at full size; each run {} s.\n\n\
         | scenario | contestant | answered | tier 1 | tier 1+2 | cache / static | degraded | tier-1 answer length | goodput (answers/s) | tier-1 p50 | tier-1 p99 | primary attempts / request | GPU calls / answer | OOM | first tier-1 after revive | tier 1 ≥ 90 % after revive |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        drill::primary_capacity(),
        duration.as_secs()
    )
}

fn row(table: &mut String, scenario: &Scenario, contestant: Contestant, f: &Figures) {
    let pct = |x: f64| format!("{:.1} %", x * 100.0);
    let ms = |d: Option<Duration>| d.map_or("–".into(), |d| format!("{} ms", d.as_millis()));
    let recovery = |d: Option<Duration>| match (scenario.revive_at(), d) {
        (None, _) => "".to_string(),
        (Some(_), None) => "never".to_string(),
        (Some(_), Some(d)) => format!("{:.2} s", d.as_secs_f64()),
    };
    writeln!(
        table,
        "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {:.0} | {} | {} | {:.3} | {:.3} | {} | {} | {} |",
        scenario.name,
        contestant.label(),
        pct(f.answered),
        pct(f.tier1),
        pct(f.tier12),
        pct(f.cache),
        pct(f.static_default),
        pct(f.degraded),
        pct(f.tier1_length),
        f.goodput,
        ms(f.tier1_p50),
        ms(f.tier1_p99),
        f.primary_per_request,
        f.amplification,
        f.out_of_memory,
        recovery(f.first_tier1),
        recovery(f.tier1_back),
    )
    .expect("writing to a string");
}

/// Answers a second by tier over time through the outage, one panel per contestant.
fn plot(reports: &[Report], path: &PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    const BUCKETS: usize = 50;
    let root = SVGBackend::new(path, (960, 300 * reports.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((reports.len().max(1), 1));
    let peak = reports
        .iter()
        .flat_map(|r| r.timeline(BUCKETS))
        .flat_map(|row| row.into_iter())
        .fold(0.0_f64, f64::max);
    let colours = [
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(214, 39, 40),
    ];
    for (report, panel) in reports.iter().zip(panels.iter()) {
        let seconds = report.scenario.duration.as_secs_f64();
        let revive = report.scenario.revive_at().map_or(0.0, |d| d.as_secs_f64());
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{}: answers/s by tier (primary down {:.1}-{:.1} s)",
                    report.contestant.label(),
                    seconds * 0.2,
                    revive
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..seconds, 0.0..peak * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("answers/s")
            .draw()?;
        let timeline = report.timeline(BUCKETS);
        let width = seconds / BUCKETS as f64;
        let labels = Tier::ALL.map(Tier::label);
        for (col, colour) in colours.iter().enumerate() {
            let label = labels.get(col).copied().unwrap_or("failed");
            let points = timeline
                .iter()
                .enumerate()
                .map(|(i, row)| ((i as f64 + 0.5) * width, row[col]));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
