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
