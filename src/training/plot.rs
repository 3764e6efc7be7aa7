//! Training curves as SVG: loss per step (train and validation), and the validation scores
//! (accuracy and macro-F1, or Pearson and Spearman for a regression).

use crate::training::metrics::LogRecord;
use anyhow::{Result, anyhow};
use plotters::prelude::*;
use std::path::Path;

pub fn plot_curves(records: &[LogRecord], path: &Path) -> Result<()> {
    let mut train = Vec::new();
    let mut val_loss = Vec::new();
    let mut val_acc = Vec::new();
    let mut val_f1 = Vec::new();
    let mut names = ("accuracy", "macro-F1");
    for r in records {
        match r {
            LogRecord::Train { step, loss, .. } => train.push((*step as f64, *loss)),
            LogRecord::Eval { step, metrics, .. } => {
                val_loss.push((*step as f64, metrics.loss));
                let (a, b) = match (metrics.pearson, metrics.spearman) {
                    (Some(p), Some(s)) => {
                        names = ("Pearson", "Spearman");
                        (p, s)
                    }
                    _ => (metrics.accuracy.unwrap_or(f64::NAN), metrics.macro_f1.unwrap_or(f64::NAN)),
                };
                val_acc.push((*step as f64, a));
                val_f1.push((*step as f64, b));
            }
            LogRecord::Unfreeze { .. } => {}
        }
    }
    let max_step = train.iter().chain(&val_loss).map(|p| p.0).fold(1.0, f64::max);
    let max_loss = train.iter().chain(&val_loss).map(|p| p.1).filter(|v| v.is_finite()).fold(0.1, f64::max) * 1.05;
    let e = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("drawing {}: {e}", path.display());

    let root = SVGBackend::new(path, (960, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (left, right) = root.split_horizontally(480);

    let mut chart = ChartBuilder::on(&left)
        .caption("loss", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..max_step, 0.0..max_loss)
        .map_err(e)?;
    chart.configure_mesh().x_desc("optimizer step").draw().map_err(e)?;
    chart
        .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
        .map_err(e)?
        .label("train")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
    chart
        .draw_series(LineSeries::new(val_loss.iter().copied(), &RED).point_size(3))
        .map_err(e)?
        .label("validation")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(e)?;

    let lo = val_acc.iter().chain(&val_f1).map(|p| p.1).filter(|v| v.is_finite()).fold(1.0, f64::min).min(0.5);
    let mut chart = ChartBuilder::on(&right)
        .caption("validation", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..max_step, lo..1.0)
        .map_err(e)?;
    chart.configure_mesh().x_desc("optimizer step").draw().map_err(e)?;
    chart
        .draw_series(LineSeries::new(val_acc.iter().copied(), &GREEN).point_size(3))
        .map_err(e)?
        .label(names.0)
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], GREEN));
    chart
        .draw_series(LineSeries::new(val_f1.iter().copied(), &MAGENTA).point_size(3))
        .map_err(e)?
        .label(names.1)
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], MAGENTA));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// One trial of a sweep: its validation metric per step.
pub struct TrialCurve {
    /// Its grid point (the colour).
    pub point: usize,
    /// Stopped at the discard point (drawn grey).
    pub discarded: bool,
    pub points: Vec<(f64, f64)>,
}

/// A sweep (`finetune sweep`): every trial's validation curve on the left, coloured by grid
/// point (discarded trials grey); the test metric of each setting's finished trials on the right,
/// one dot per seed and a bar at their mean.
pub fn plot_sweep(curves: &[TrialCurve], tests: &[(String, Vec<f64>)], metric: &str, path: &Path) -> Result<()> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("drawing {}: {e}", path.display());
    let finite = |v: &f64| v.is_finite();
    let all: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .chain(tests.iter().flat_map(|t| t.1.iter().copied()))
        .filter(finite)
        .collect();
    let (lo, hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let (lo, hi) = (lo - pad, hi + pad);
    let max_step = curves.iter().flat_map(|c| c.points.iter().map(|p| p.0)).fold(1.0, f64::max);
    let colour = |i: usize| Palette99::pick(i).to_rgba();

    let root = SVGBackend::new(path, (1040, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (left, right) = root.split_horizontally(560);
    let mut chart = ChartBuilder::on(&left)
        .caption(format!("validation {metric}, every trial"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_step, lo..hi)
        .map_err(e)?;
    chart.configure_mesh().x_desc("optimizer step").draw().map_err(e)?;
    for c in curves.iter().filter(|c| c.discarded) {
        chart
            .draw_series(LineSeries::new(c.points.iter().copied(), RGBColor(170, 170, 170)).point_size(2))
            .map_err(e)?;
    }
    for c in curves.iter().filter(|c| !c.discarded) {
        chart.draw_series(LineSeries::new(c.points.iter().copied(), colour(c.point)).point_size(2)).map_err(e)?;
    }

    let n = tests.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&right)
        .caption(format!("test {metric} per setting"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..n - 0.5, lo..hi)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_labels(tests.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.round() as usize;
            if (x - x.round()).abs() < 1e-6 && i < tests.len() { tests[i].0.clone() } else { String::new() }
        })
        .draw()
        .map_err(e)?;
    for (i, (_, values)) in tests.iter().enumerate() {
        let x = i as f64;
        chart.draw_series(values.iter().map(|&v| Circle::new((x, v), 4, colour(i).filled()))).map_err(e)?;
        if !values.is_empty() {
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            chart
                .draw_series(LineSeries::new([(x - 0.25, mean), (x + 0.25, mean)], BLACK.stroke_width(2)))
                .map_err(e)?;
        }
    }
    root.present().map_err(e)?;
    Ok(())
}
