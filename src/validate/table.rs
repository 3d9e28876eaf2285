//! The human-readable validation report: sizes, per-output agreement, accuracy, latency and
//! gates as a table on stderr.

use super::ValidateReport;
use std::io::Write;

pub(super) fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.2}x", a as f64 / b as f64)
    }
}

/// The human-readable report.
pub fn render(r: &ValidateReport, w: &mut dyn Write) -> std::io::Result<()> {
    let d = &r.data;
    writeln!(
        w,
        "data: {} ({} samples, {} per run{})",
        d.path.as_deref().unwrap_or(&format!(
            "seeded random inputs (seed {})",
            d.seed.unwrap_or_default()
        )),
        d.samples,
        d.batch_size,
        if d.inputs.iter().any(|i| i.quantized) {
            "; float data quantized with the model's input scale/zero point"
        } else {
            ""
        }
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "{:<28} {:>11} {:>11} {:>9} {:>9} {:>7}",
        "output", "max |diff|", "mean |diff|", "cos mean", "cos min", "top-1"
    )?;
    for o in &r.outputs {
        writeln!(
            w,
            "{:<28} {:>11.3e} {:>11.3e} {:>9.6} {:>9.6} {:>7}",
            crate::text::ellipsize(&o.name, 28),
            o.max_abs_diff,
            o.mean_abs_diff,
            o.cosine_mean,
            o.cosine_min,
            o.top1_agreement
                .map(|a| format!("{:.1}%", 100.0 * a))
                .unwrap_or_else(|| "-".into())
        )?;
        if o.candidate_nonfinite > 0 {
            writeln!(
                w,
                "  warning: {} non-finite values in the candidate's output",
                o.candidate_nonfinite
            )?;
        }
    }
    writeln!(w)?;
    writeln!(
        w,
        "{:<16} {:>14} {:>14} {:>9}",
        "", "original", "candidate", "ratio"
    )?;
    if let Some(a) = &r.accuracy {
        writeln!(
            w,
            "{:<16} {:>13.2}% {:>13.2}% {:>+8.2}pt",
            "accuracy",
            a.original,
            a.candidate,
            0.0 - a.drop_points + 0.0 // never "-0.00"
        )?;
    }
    if let Some(l) = &r.latency {
        writeln!(
            w,
            "{:<16} {:>11.3} ms {:>11.3} ms {:>8.2}x",
            format!("latency (p50)"),
            l.original.median_ms,
            l.candidate.median_ms,
            l.speedup
        )?;
        writeln!(
            w,
            "{:<16} {:>11.3} ms {:>11.3} ms",
            "latency (p90)", l.original.p90_ms, l.candidate.p90_ms
        )?;
    }
    let (o, c) = (&r.original, &r.candidate);
    writeln!(
        w,
        "{:<16} {:>14} {:>14} {:>9}",
        "file bytes",
        o.file_bytes,
        c.file_bytes,
        ratio(o.file_bytes, c.file_bytes)
    )?;
    writeln!(
        w,
        "{:<16} {:>14} {:>14} {:>9}",
        "gzip -9 bytes",
        o.gzip_bytes,
        c.gzip_bytes,
        ratio(o.gzip_bytes, c.gzip_bytes)
    )?;
    writeln!(
        w,
        "{:<16} {:>14} {:>14} {:>9}",
        "zstd -9 bytes",
        o.zstd_bytes,
        c.zstd_bytes,
        ratio(o.zstd_bytes, c.zstd_bytes)
    )?;
    writeln!(w, "{:<16} {:>14} {:>14}", "params", o.params, c.params)?;
    writeln!(
        w,
        "{:<16} {:>14} {:>14} {:>9}",
        "nonzero params",
        o.nonzero_params,
        c.nonzero_params,
        ratio(o.nonzero_params, c.nonzero_params)
    )?;
    writeln!(
        w,
        "{:<16} {:>14} {:>14} {:>9}",
        "MACs",
        o.macs,
        c.macs,
        ratio(o.macs, c.macs)
    )?;
    if !r.gates.is_empty() {
        writeln!(w)?;
        for g in &r.gates {
            writeln!(
                w,
                "gate {:<20} limit {:<10} measured {:<12.6} {}",
                g.gate,
                g.limit,
                g.value,
                if g.passed { "passed" } else { "FAILED" }
            )?;
        }
    }
    Ok(())
}
