//! `--plot FILE.svg`: the run as a chart, drawn with plotters' SVG backend.
//! One run: the latency percentile distribution, x on the usual log scale
//! where 90%, 99% and 99.9% are evenly spaced. A sweep: round trips per
//! second (left axis) and p50/p99 latency (right axis) against connections.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::report::{Report, percentiles};
use crate::error::Error;

/// Chart size in pixels.
const SIZE: (u32, u32) = (960, 540);

/// A chart file, created before the run so that a path that cannot be
/// written fails at once rather than after the whole run.
pub(super) struct Plot {
    path: PathBuf,
    file: File,
}

impl Plot {
    pub(super) fn create(path: &Path) -> Result<Plot, Error> {
        let file = File::create(path).map_err(|source| Error::Io {
            context: format!("cannot write --plot {}", path.display()),
            source,
        })?;
        Ok(Plot {
            path: path.to_path_buf(),
            file,
        })
    }

    /// One run: latency (µs) at each percentile.
    pub(super) fn percentiles(self, report: &Report) -> Result<(), Error> {
        let histogram = &report.latency;
        // x = log10(1 / (1 - q)): 1 is 90%, 2 is 99%, 3 is 99.9%. Past
        // log10(count) every percentile is the maximum.
        let count = histogram.len().max(10) as f64;
        let x_max = count.log10().ceil().max(1.0);
        let steps = (x_max * 50.0) as u32;
        let points: Vec<(f64, f64)> = (0..=steps)
            .map(|n| {
                let x = x_max * f64::from(n) / f64::from(steps);
                let quantile = 1.0 - 10f64.powf(-x);
                (x, histogram.value_at_quantile(quantile) as f64)
            })
            .collect();
        let y_max = (histogram.max() as f64 * 1.1).max(1.0);
        let caption = format!(
            "{} connections, {} round trips: latency by percentile",
            report.connections, report.round_trips
        );
        let svg = draw(|root| {
            let mut chart = ChartBuilder::on(&root)
                .caption(caption, ("sans-serif", 20))
                .margin(16)
                .x_label_area_size(48)
                .y_label_area_size(72)
                .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
            chart
                .configure_mesh()
                .x_desc("percentile")
                .y_desc("latency (µs)")
                .x_labels(x_max as usize + 1)
                .x_label_formatter(&|x| percent_label(*x))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()?;
            chart.draw_series(LineSeries::new(points, &BLUE))?;
            Ok(())
        })?;
        self.write(&svg)
    }

    /// A sweep: rps and p50/p99 against connections.
    pub(super) fn sweep(self, reports: &[Report]) -> Result<(), Error> {
        // Connections on a log axis: sweeps go 1, 10, 100, 1000, ...
        let connections = reports.iter().map(|r| r.connections.max(1) as f64);
        let x_min = connections.clone().fold(f64::MAX, f64::min).min(1.0);
        let x_max = connections.fold(1.0, f64::max) * 1.1;
        let rps_max = reports.iter().map(|r| r.rps).fold(1.0, f64::max) * 1.1;
        let latency_max = reports
            .iter()
            .map(|r| percentiles(&r.latency)[2])
            .fold(1.0, f64::max)
            * 1.1;
        let series = |pick: &dyn Fn(&Report) -> f64| -> Vec<(f64, f64)> {
            reports
                .iter()
                .map(|r| (r.connections.max(1) as f64, pick(r)))
                .collect()
        };
        let rps = series(&|r| r.rps);
        let p50 = series(&|r| percentiles(&r.latency)[0]);
        let p99 = series(&|r| percentiles(&r.latency)[2]);
        let svg = draw(|root| {
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    "round trips per second and latency by connections",
                    ("sans-serif", 20),
                )
                .margin(16)
                .x_label_area_size(48)
                .y_label_area_size(80)
                .right_y_label_area_size(80)
                .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..rps_max)?
                .set_secondary_coord((x_min..x_max).log_scale(), 0.0..latency_max);
            chart
                .configure_mesh()
                .x_desc("connections")
                .y_desc("round trips per second")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()?;
            chart
                .configure_secondary_axes()
                .y_desc("latency (µs)")
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()?;
            chart
                .draw_series(LineSeries::new(rps.clone(), &BLUE))?
                .label("round trips per second")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
            chart.draw_series(PointSeries::of_element(rps, 3, &BLUE, &|c, s, st| {
                Circle::new(c, s, st.filled())
            }))?;
            chart
                .draw_secondary_series(LineSeries::new(p50, &GREEN))?
                .label("p50 latency (µs)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREEN));
            chart
                .draw_secondary_series(LineSeries::new(p99, &RED))?
                .label("p99 latency (µs)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
            Ok(())
        })?;
        self.write(&svg)
    }

    fn write(mut self, svg: &str) -> Result<(), Error> {
        self.file
            .write_all(svg.as_bytes())
            .map_err(|source| Error::Io {
                context: format!("cannot write --plot {}", self.path.display()),
                source,
            })
    }
}

type Root<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Renders a chart into an SVG string.
fn draw(
    paint: impl FnOnce(Root<'_>) -> Result<(), Box<dyn std::error::Error + '_>>,
) -> Result<String, Error> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let failed =
            |err: &dyn std::fmt::Display| Error::Failed(format!("cannot draw --plot: {err}"));
        root.fill(&WHITE).map_err(|err| failed(&err))?;
        paint(root.clone()).map_err(|err| failed(&err))?;
        root.present().map_err(|err| failed(&err))?;
    }
    Ok(svg)
}

/// `0%`, `90%`, `99%`, `99.9%`, … for x = 0, 1, 2, 3, …
fn percent_label(x: f64) -> String {
    let nines = x.round() as i32;
    if (x - f64::from(nines)).abs() > 1e-6 {
        return String::new();
    }
    let percent = 100.0 * (1.0 - 10f64.powi(-nines));
    let decimals = (nines - 2).max(0) as usize;
    format!("{percent:.decimals$}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_labels_count_nines() {
        assert_eq!(percent_label(0.0), "0%");
        assert_eq!(percent_label(1.0), "90%");
        assert_eq!(percent_label(2.0), "99%");
        assert_eq!(percent_label(3.0), "99.9%");
        assert_eq!(percent_label(5.0), "99.999%");
        assert_eq!(percent_label(1.5), "");
    }
}
