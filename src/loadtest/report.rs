//! The report of `omsgate loadtest`: the terminal table in the seed's before/after layout, the
//! per-route table, the capacity steps, and a self-contained HTML page (inline SVG charts, no
//! script, no external file).

use std::fmt::Write as _;

use super::{Report, Sample, TargetReport};

// === Terminal ===

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "n/a".into())
}

fn capacity_cell(t: &TargetReport) -> String {
    match &t.capacity {
        None => "not searched".into(),
        Some(c) => match c.broke_at {
            Some(b) => format!("{} (broke at {b})", c.max_users),
            None => format!("≥ {} (never broke)", c.max_users),
        },
    }
}

/// The seed's before/after table: one column per target.
pub fn seed_table(r: &Report) -> String {
    let mut out = String::new();
    let o = &r.scenario.objective;
    let _ = writeln!(
        out,
        "omsgate loadtest: {}, {:.0} s per run\nmix {}; Zipf s = {} over {} invoices x {} tenants",
        r.scenario.load,
        r.scenario.duration_s,
        r.scenario
            .mix
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.scenario.zipf_s,
        r.scenario.invoices_per_tenant,
        r.scenario.tenants,
    );
    let _ = writeln!(
        out,
        "latency from the intended send time (no coordinated omission)\n"
    );
    let cols: Vec<&TargetReport> = r.targets.iter().collect();
    type Cell = Box<dyn Fn(&TargetReport) -> String>;
    let rows: Vec<(&str, Cell)> = vec![
        ("Mean response time", Box::new(|t| ms(t.main.all.mean_ms))),
        (
            "  p50 / p99 / p99.9",
            Box::new(|t| {
                format!(
                    "{} / {} / {}",
                    ms(t.main.all.p50_ms),
                    ms(t.main.all.p99_ms),
                    ms(t.main.all.p999_ms)
                )
            }),
        ),
        (
            "  reads mean / p99",
            Box::new(|t| format!("{} / {}", ms(t.main.reads.mean_ms), ms(t.main.reads.p99_ms))),
        ),
        (
            "  writes mean / p99",
            Box::new(|t| {
                format!(
                    "{} / {}",
                    ms(t.main.writes.mean_ms),
                    ms(t.main.writes.p99_ms)
                )
            }),
        ),
        (
            "Throughput",
            Box::new(|t| format!("{:.1} req/s", t.main.throughput_rps)),
        ),
        (
            "Errors / timeouts",
            Box::new(|t| {
                let by_status: Vec<String> = t
                    .main
                    .all
                    .error_statuses
                    .iter()
                    .map(|(s, n)| format!("{s}: {n}"))
                    .collect();
                if by_status.is_empty() {
                    format!("{} / {}", t.main.all.errors, t.main.all.timeouts)
                } else {
                    format!(
                        "{} ({}) / {}",
                        t.main.all.errors,
                        by_status.join(", "),
                        t.main.all.timeouts
                    )
                }
            }),
        ),
        ("Concurrent users sustained*", Box::new(capacity_cell)),
        (
            "Backend requests per request",
            Box::new(
                |t| match (t.main.oms_per_request, t.main.pooled_per_request) {
                    (Some(oms), Some(db)) if db > 0.0 => {
                        format!("{:.3} (OMS {oms:.3}, pooled {db:.3})", oms + db)
                    }
                    (Some(oms), _) => format!("{oms:.3} (OMS)"),
                    _ => "n/a".into(),
                },
            ),
        ),
        (
            "DB statements per request",
            Box::new(|t| opt(t.main.db_statements_per_request, |v| format!("{v:.2}"))),
        ),
        (
            "Cache hit ratio",
            Box::new(|t| opt(t.main.cache_hit_ratio, |v| format!("{:.1} %", v * 100.0))),
        ),
        (
            "Gateway memory (peak RSS)",
            Box::new(|t| opt(t.main.rss_peak_mib, |v| format!("{v:.0} MiB"))),
        ),
        (
            "Gateway CPU",
            Box::new(|t| opt(t.main.cpu_percent, |v| format!("{v:.0} % of a core"))),
        ),
    ];
    let label_w = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0)
        + 2;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(_, f)| cols.iter().map(|t| f(t)).collect())
        .collect();
    let col_w: Vec<usize> = (0..cols.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain(std::iter::once(cols[i].name.chars().count()))
                .max()
                .unwrap_or(0)
                + 3
        })
        .collect();
    let _ = write!(out, "{:label_w$}", "");
    for (i, t) in cols.iter().enumerate() {
        let _ = write!(out, "{:>w$}", t.name, w = col_w[i]);
    }
    out.push('\n');
    for ((label, _), row) in rows.iter().zip(&cells) {
        let _ = write!(out, "{label:label_w$}");
        for (i, c) in row.iter().enumerate() {
            let _ = write!(out, "{c:>w$}", w = col_w[i]);
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "* most users of a capacity step meeting the objective: mean ≤ {:.0} ms, p99 ≤ {:.0} ms, ≤ {} errors/timeouts",
        o.mean.as_secs_f64() * 1000.0,
        o.p99.as_secs_f64() * 1000.0,
        o.errors
    );
    out
}

/// Per target: each route of the main run, then each capacity step.
pub fn detail_tables(r: &Report) -> String {
    let mut out = String::new();
    let head = format!(
        "{:<30} {:<14} {:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>8} {:>7}\n",
        "target / run",
        "route",
        "kind",
        "requests",
        "mean",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "errors",
        "timeouts",
        "cached"
    );
    out.push_str(&head);
    let row = |out: &mut String, who: &str, route: &str, kind: &str, s: &super::Summary| {
        let _ = writeln!(
            out,
            "{:<30} {:<14} {:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>8} {:>7}",
            truncate(who, 30),
            route,
            kind,
            s.requests,
            ms(s.mean_ms),
            ms(s.p50_ms),
            ms(s.p90_ms),
            ms(s.p99_ms),
            ms(s.p999_ms),
            s.errors,
            s.timeouts,
            s.cached
        );
    };
    for t in &r.targets {
        for route in &t.main.routes {
            row(&mut out, &t.name, route.route, route.kind, &route.summary);
        }
        if let Some(c) = &t.capacity {
            for step in &c.steps {
                let who = format!("{}: {}", t.name, step.label);
                row(&mut out, &who, "all", "", &step.all);
            }
        }
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

// === HTML ===

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 6] = [
    "#d1495b", "#00798c", "#edae49", "#30638e", "#66a182", "#8d96a3",
];

/// One line of a chart.
struct Series {
    name: String,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

/// A line chart as inline SVG: axes with a few ticks, one polyline per series, a legend.
fn svg_chart(title: &str, unit: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (560.0, 270.0, 56.0, 12.0, 44.0, 40.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let x_max = pts.clone().map(|p| p.0).fold(0.0_f64, f64::max).max(1.0);
    let y_max = nice(pts.map(|p| p.1).fold(0.0_f64, f64::max));
    let sx = |x: f64| left + x / x_max * (w - left - right);
    let sy = |y: f64| top + (1.0 - y / y_max) * (h - top - bottom);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><title>{t}</title><rect width="{w}" height="{h}" fill="#fff"/><text x="{left}" y="18" font-size="13" font-weight="bold">{t}</text>"##,
        t = esc(title)
    );
    for i in 0..=4 {
        let y = y_max * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" font-size="10" text-anchor="end">{label}</text>"##,
            x2 = w - right,
            yy = sy(y),
            tx = left - 4.0,
            ty = sy(y) + 3.0,
            label = esc(&format_tick(y)),
        );
    }
    for i in 0..=5 {
        let x = x_max * i as f64 / 5.0;
        let _ = write!(
            svg,
            r##"<text x="{xx:.1}" y="{ty}" font-size="10" text-anchor="middle">{x:.0}</text>"##,
            xx = sx(x),
            ty = h - bottom + 14.0,
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{cx}" y="{ty}" font-size="10" text-anchor="middle">seconds</text><text x="12" y="{cy}" font-size="10" transform="rotate(-90 12 {cy})" text-anchor="middle">{u}</text><line x1="{left}" x2="{left}" y1="{top}" y2="{yb}" stroke="#333"/><line x1="{left}" x2="{xr}" y1="{yb}" y2="{yb}" stroke="#333"/>"##,
        cx = (left + w - right) / 2.0,
        ty = h - bottom + 28.0,
        cy = (top + h - bottom) / 2.0,
        u = esc(unit),
        yb = h - bottom,
        xr = w - right,
    );
    let mut legend_x = left;
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let path: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{p}"/><rect x="{legend_x:.0}" y="25" width="10" height="10" fill="{c}"/><text x="{lx:.0}" y="34" font-size="11">{n}</text>"##,
            c = s.color,
            p = path.join(" "),
            lx = legend_x + 13.0,
            n = esc(&s.name),
        );
        legend_x += 20.0 + 6.5 * s.name.chars().count() as f64;
    }
    svg.push_str("</svg>");
    svg
}

/// A round upper bound for an axis.
fn nice(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if max <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn format_tick(v: f64) -> String {
    if v == 0.0 || v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn series_of(report: &Report, f: impl Fn(&Sample) -> Option<f64>) -> Vec<Series> {
    report
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| Series {
            name: t.name.clone(),
            color: COLORS[i % COLORS.len()],
            points: t
                .timeline
                .iter()
                .filter_map(|s| f(s).map(|v| (s.t_s, v)))
                .collect(),
        })
        .collect()
}

/// The self-contained HTML report.
pub fn html(r: &Report) -> String {
    let mut charts = Vec::new();
    for t in &r.targets {
        let pick = |f: fn(&Sample) -> f64| t.timeline.iter().map(|s| (s.t_s, f(s))).collect();
        let series = vec![
            Series {
                name: "p50".into(),
                color: COLORS[4],
                points: pick(|s| s.p50_ms),
            },
            Series {
                name: "p90".into(),
                color: COLORS[2],
                points: pick(|s| s.p90_ms),
            },
            Series {
                name: "p99".into(),
                color: COLORS[0],
                points: pick(|s| s.p99_ms),
            },
        ];
        charts.push(svg_chart(
            &format!("Latency percentiles: {}", t.name),
            "ms",
            &series,
        ));
    }
    charts.push(svg_chart(
        "Throughput (requests finished per second)",
        "req/s",
        &series_of(r, |s| Some(s.rps)),
    ));
    charts.push(svg_chart(
        "Users arrived",
        "users",
        &series_of(r, |s| Some(s.users as f64)),
    ));
    let backend = series_of(r, |s| s.backend_rps);
    if backend.iter().any(|s| !s.points.is_empty()) {
        charts.push(svg_chart(
            "Backend requests per second (OMS + pooled queries)",
            "req/s",
            &backend,
        ));
    }
    let hits = series_of(r, |s| s.cache_hit_ratio.map(|v| v * 100.0));
    if hits.iter().any(|s| !s.points.is_empty()) {
        charts.push(svg_chart("Cache hit ratio", "%", &hits));
    }
    let rss = series_of(r, |s| s.rss_mib);
    if rss.iter().any(|s| !s.points.is_empty()) {
        charts.push(svg_chart("Gateway RSS", "MiB", &rss));
    }
    let errors = series_of(r, |s| Some(s.errors as f64));
    charts.push(svg_chart(
        "Errors and timeouts per interval",
        "count",
        &errors,
    ));

    let mut notes = String::new();
    for n in &r.notes {
        let _ = write!(notes, "<li>{}</li>", esc(n));
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>omsgate loadtest</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }}
pre {{ background: #fff; border: 1px solid #ddd; padding: 12px; overflow-x: auto; font-size: 12px; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.charts svg {{ border: 1px solid #ddd; }}
</style></head><body>
<h1>omsgate loadtest</h1>
<p>Latency is measured from each request's intended send time (open model, no coordinated omission). Time series points are per sample interval, by completion time.</p>
<h2>Before / after</h2>
<pre>{table}</pre>
<h2>Over time</h2>
<div class="charts">{charts}</div>
<h2>Per route and capacity steps</h2>
<pre>{detail}</pre>
<ul>{notes}</ul>
</body></html>
"#,
        table = esc(&seed_table(r)),
        charts = charts.join("\n"),
        detail = esc(&detail_tables(r)),
    )
}

/// The report as pretty JSON.
pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_round_up() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(180.0), 200.0);
        assert_eq!(nice(0.9), 1.0);
    }

    #[test]
    fn charts_escape_names_and_draw_each_series() {
        let svg = svg_chart(
            "a <b>",
            "ms",
            &[Series {
                name: "x&y".into(),
                color: COLORS[0],
                points: vec![(0.0, 1.0), (1.0, 2.0)],
            }],
        );
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("x&amp;y"));
        assert_eq!(svg.matches("<polyline").count(), 1);
    }
}
