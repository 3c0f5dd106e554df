//! The PNG: the gap a client sees against the memory moved, one line per method, with the
//! machine's floor as its own line.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use crate::record::{Record, Run, Workload};
use crate::report::{floors, groups, stats};

/// A TrueType font for the labels (Debian's fonts-dejavu-core, which ffmpeg pulls in).
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn register_font() -> Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .with_context(|| {
            format!(
                "no font for the plot's labels (looked for {})",
                FONTS.join(", ")
            )
        })?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a usable TrueType font"))
}

struct Point {
    x: f64,
    med: f64,
    lo: f64,
    hi: f64,
}

pub fn draw(records: &[Record], png: &Path) -> Result<()> {
    register_font()?;
    let runs: Vec<&Run> = crate::record::runs(records);
    // x: MiB of Redis data (the counter at 0); y: seconds.
    let mut series: BTreeMap<(usize, String), Vec<Point>> = BTreeMap::new();
    for ((w, size), method, rs) in groups(&runs) {
        let gaps: Vec<f64> = rs
            .iter()
            .filter(|r| r.ok)
            .filter_map(|r| r.measured_gap())
            .collect();
        let Some((med, lo, hi)) = stats(&gaps) else {
            continue;
        };
        let x = if w == Workload::Counter {
            0.0
        } else {
            size as f64
        };
        let rank = ["ferry", "ferry-postcopy", "podman"]
            .iter()
            .position(|m| *m == method)
            .unwrap_or(9);
        series.entry((rank, method)).or_default().push(Point {
            x,
            med: med / 1000.0,
            lo: lo / 1000.0,
            hi: hi / 1000.0,
        });
    }
    let limits: Vec<_> = crate::record::limits(records);
    for (size, f) in floors(&limits) {
        if let Some((med, lo, hi)) = stats(&f) {
            series
                .entry((10, "machine floor".into()))
                .or_default()
                .push(Point {
                    x: size as f64,
                    med: med / 1000.0,
                    lo: lo / 1000.0,
                    hi: hi / 1000.0,
                });
        }
    }
    let xmax = series
        .values()
        .flatten()
        .map(|p| p.x)
        .fold(0.0, f64::max)
        .max(64.0)
        * 1.08;
    let ymax = series
        .values()
        .flatten()
        .map(|p| p.hi)
        .fold(0.0, f64::max)
        .max(0.1)
        * 1.15;

    let root = BitMapBackend::new(png, (1100, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Client gap during a move between two lab hosts",
            ("sans-serif", 26),
        )
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d(-xmax * 0.03..xmax, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("Redis data, MiB (0: the counter, gap between its ticks)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .y_desc("longest gap, s (median; bar: min–max)")
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(120, 120, 120),
    ];
    for (i, ((_, name), mut pts)) in series.into_iter().enumerate() {
        pts.sort_by(|a, b| a.x.total_cmp(&b.x));
        let color = if name == "machine floor" {
            colors[3]
        } else {
            colors[i % 3]
        };
        let width = if name == "machine floor" { 1 } else { 2 };
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.x, p.med)),
                color.stroke_width(width),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart.draw_series(
            pts.iter()
                .map(|p| Circle::new((p.x, p.med), 5, color.filled())),
        )?;
        chart
            .draw_series(pts.iter().map(|p| {
                PathElement::new(vec![(p.x, p.lo), (p.x, p.hi)], color.stroke_width(2))
            }))?;
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 18))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}
