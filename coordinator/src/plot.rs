//! The report plot: test AUROC and the hard fractions of new anomalies per round, as SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

/// Writes the plot of `report` to `path`. Round 0 shows the baseline AUROC only.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let auroc: Vec<(f64, f64)> = report
        .baseline_auroc
        .map(|auroc| (0.0, auroc))
        .into_iter()
        .chain(report.rounds.iter().filter_map(|r| r.auroc.map(|auroc| (f64::from(r.round), auroc))))
        .collect();
    let hard_new: Vec<(f64, f64)> = report.rounds.iter().map(|r| (f64::from(r.round), r.hard_fraction_new)).collect();
    let hard_vs_baseline: Vec<(f64, f64)> =
        report.rounds.iter().map(|r| (f64::from(r.round), r.hard_fraction_new_vs_baseline)).collect();
    let last_round = f64::from(report.config.rounds.max(1));
    // All series are shares in [0, 1]; the axis starts a little below the lowest point so that
    // differences of a few hundredths stay visible.
    let lowest = auroc.iter().chain(&hard_new).chain(&hard_vs_baseline).map(|&(_, y)| y).fold(1.0, f64::min);
    let y_min = ((lowest - 0.05) * 20.0).floor().max(0.0) / 20.0;

    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(to_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("KKA experiment {}", report.experiment), ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.2..last_round + 0.2, y_min..1.0)
        .map_err(to_error)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("value")
        .x_labels(report.config.rounds as usize + 1)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(to_error)?;

    let series = [
        ("test AUROC", &BLUE, auroc),
        ("hard fraction of new anomalies, previous detector", &RED, hard_new),
        ("hard fraction of new anomalies, round-0 detector", &GREEN, hard_vs_baseline),
    ];
    for (label, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(to_error)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled()))).map_err(to_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(to_error)?;
    root.present().map_err(to_error)?;
    Ok(())
}

fn to_error<E: std::error::Error + Send + Sync + 'static>(error: DrawingAreaErrorKind<E>) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(std::io::Error::other(error.to_string()))
}
