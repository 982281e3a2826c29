//! Charts drawn on the server as SVG: nothing to load from elsewhere,
//! nothing to build, readable without the page's script (each point has its
//! words in a `<title>`, and links to its build). Colours are attributes,
//! not the page's stylesheet, so a chart also reads on its own URL.

use std::fmt::Write;

use shared::model::Results;

use crate::store::{BuildPoint, DayCount, QueuePoint, WindowBuild};
use crate::urls;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 56.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 24.0;

/// The colour of a result, as the pages show it.
fn colour(results: Option<i16>) -> &'static str {
    match results.and_then(Results::from_code) {
        Some(Results::Success) => "#2e7d32",
        Some(Results::Warnings) => "#e69500",
        Some(Results::Failure) => "#c62828",
        Some(Results::Skipped) => "#9e9e9e",
        Some(Results::Exception) => "#8e24aa",
        Some(Results::Retry) => "#1e88e5",
        Some(Results::Cancelled) => "#6d4c41",
        None => "#e7c13a",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `3m 04s`, `1h 02m`, `12s`.
fn seconds_text(seconds: f64) -> String {
    let whole = seconds.round().max(0.0) as u64;
    match whole {
        0..60 => format!("{whole}s"),
        60..3600 => format!("{}m {:02}s", whole / 60, whole % 60),
        _ => format!("{}h {:02}m", whole / 3600, whole % 3600 / 60),
    }
}

/// A round top for an axis at or above `max`.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|step| step * magnitude).find(|top| *top >= max).unwrap_or(max)
}

/// The frame: the SVG element, its title, the plot's box and the left
/// axis's labels.
fn open(svg: &mut String, id: &str, title: &str, left_top: &str) {
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{id}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}" font-family="sans-serif" font-size="11"><title>{title}</title><rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" fill="none" stroke="#ccc"/><text x="{lx}" y="{ty}" text-anchor="end" fill="#555">{left_top}</text><text x="{lx}" y="{by}" text-anchor="end" fill="#555">0</text>"##,
        title = escape(title),
        w = WIDTH - LEFT - RIGHT,
        h = HEIGHT - TOP - BOTTOM,
        lx = LEFT - 4.0,
        ty = TOP + 10.0,
        by = HEIGHT - BOTTOM,
    );
}

fn x_at(index: usize, count: usize) -> f64 {
    let span = WIDTH - LEFT - RIGHT;
    if count <= 1 { LEFT + span / 2.0 } else { LEFT + span * index as f64 / (count - 1) as f64 }
}

fn y_at(value: f64, top: f64) -> f64 {
    HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (value / top).clamp(0.0, 1.0)
}

fn empty(svg: &mut String, what: &str) {
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#777">{}</text>"##,
        WIDTH / 2.0,
        HEIGHT / 2.0,
        escape(what)
    );
}

/// A builder's last builds: duration over build number, one point per
/// build in its result's colour, each linking to the build.
pub fn builder_durations(builder: &str, points: &[BuildPoint]) -> String {
    let top = nice_max(points.iter().map(|point| point.seconds).fold(0.0, f64::max));
    let mut svg = String::new();
    let title = format!("Duration of the last {} builds of {builder}", points.len());
    open(&mut svg, "builder-durations", &title, &seconds_text(top));
    if points.is_empty() {
        empty(&mut svg, "no finished build yet");
    }
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(index, point)| format!("{:.1},{:.1}", x_at(index, points.len()), y_at(point.seconds, top)))
        .collect();
    if points.len() > 1 {
        let _ = write!(svg, r##"<polyline points="{}" fill="none" stroke="#999" stroke-width="1"/>"##, path.join(" "));
    }
    for (index, point) in points.iter().enumerate() {
        let result = point.results.and_then(Results::from_code).map_or("running", Results::name);
        let _ = write!(
            svg,
            r##"<a href="{href}"><circle class="point" data-number="{number}" cx="{x:.1}" cy="{y:.1}" r="4" fill="{fill}"><title>#{number} {result}, {took}</title></circle></a>"##,
            href = escape(&urls::build_page(builder, i64::from(point.number))),
            number = point.number,
            x = x_at(index, points.len()),
            y = y_at(point.seconds, top),
            fill = colour(point.results),
            took = seconds_text(point.seconds),
        );
    }
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let _ = write!(
            svg,
            r##"<text x="{LEFT}" y="{y}" fill="#555">#{}</text><text x="{r}" y="{y}" text-anchor="end" fill="#555">#{}</text>"##,
            first.number,
            last.number,
            y = HEIGHT - 6.0,
            r = WIDTH - RIGHT,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A worker's builds per day, the failed part of each bar red.
pub fn worker_days(worker: &str, days: &[DayCount]) -> String {
    let top = nice_max(days.iter().map(|day| day.builds as f64).fold(0.0, f64::max));
    let mut svg = String::new();
    let title = format!("Builds and failures of {worker} per day, last {} days", days.len());
    open(&mut svg, "worker-days", &title, &format!("{top}"));
    let slot = (WIDTH - LEFT - RIGHT) / days.len().max(1) as f64;
    for (index, day) in days.iter().enumerate() {
        let x = LEFT + slot * index as f64 + slot * 0.15;
        let width = slot * 0.7;
        let total = y_at(day.builds as f64, top);
        let failed = y_at(day.failures as f64, top);
        let base = HEIGHT - BOTTOM;
        let _ = write!(
            svg,
            r##"<g class="day"><title>{date}: {builds} builds, {failures} failed</title><rect x="{x:.1}" y="{total:.1}" width="{width:.1}" height="{th:.1}" fill="#90a4ae"/><rect x="{x:.1}" y="{failed:.1}" width="{width:.1}" height="{fh:.1}" fill="#c62828"/></g>"##,
            date = day.day.format("%Y-%m-%d"),
            builds = day.builds,
            failures = day.failures,
            th = base - total,
            fh = base - failed,
        );
    }
    if let (Some(first), Some(last)) = (days.first(), days.last()) {
        let _ = write!(
            svg,
            r##"<text x="{LEFT}" y="{y}" fill="#555">{}</text><text x="{r}" y="{y}" text-anchor="end" fill="#555">{}</text>"##,
            first.day.format("%m-%d"),
            last.day.format("%m-%d"),
            y = HEIGHT - 6.0,
            r = WIDTH - RIGHT,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The installation's queue over the last day: requests pending (solid,
/// left axis) and the mean wait of those claimed (dashed, right axis).
pub fn queue(points: &[QueuePoint]) -> String {
    let pending_top = nice_max(points.iter().map(|point| point.pending as f64).fold(0.0, f64::max));
    let wait_top = nice_max(points.iter().filter_map(|point| point.mean_wait).fold(0.0, f64::max));
    let mut svg = String::new();
    open(&mut svg, "queue-history", "Requests pending and their wait, last 24 hours", &format!("{pending_top}"));
    let _ = write!(
        svg,
        r##"<text x="{x}" y="{y}" fill="#1e88e5">{}</text><text x="{x}" y="{b}" fill="#1e88e5">0</text>"##,
        seconds_text(wait_top),
        x = WIDTH - RIGHT + 4.0,
        y = TOP + 10.0,
        b = HEIGHT - BOTTOM,
    );
    let pending: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(index, point)| {
            format!("{:.1},{:.1}", x_at(index, points.len()), y_at(point.pending as f64, pending_top))
        })
        .collect();
    let _ = write!(
        svg,
        r##"<polyline class="pending" points="{}" fill="none" stroke="#37474f" stroke-width="1.5"/>"##,
        pending.join(" ")
    );
    let waits: Vec<String> = points
        .iter()
        .enumerate()
        .filter_map(|(index, point)| {
            Some(format!("{:.1},{:.1}", x_at(index, points.len()), y_at(point.mean_wait?, wait_top)))
        })
        .collect();
    if !waits.is_empty() {
        let _ = write!(
            svg,
            r##"<polyline class="wait" points="{}" fill="none" stroke="#1e88e5" stroke-dasharray="4 3"/>"##,
            waits.join(" ")
        );
    }
    for (index, point) in points.iter().enumerate() {
        let wait =
            point.mean_wait.map_or_else(|| "none claimed".to_owned(), |wait| format!("waited {}", seconds_text(wait)));
        let _ = write!(
            svg,
            r##"<circle class="point" cx="{:.1}" cy="{:.1}" r="2" fill="#37474f"><title>{}: {} pending, {wait}</title></circle>"##,
            x_at(index, points.len()),
            y_at(point.pending as f64, pending_top),
            point.at.format("%H:%M UTC"),
            point.pending,
        );
    }
    svg.push_str(&format!(
        r##"<text x="{LEFT}" y="{y}" fill="#555">24 hours ago</text><text x="{r}" y="{y}" text-anchor="end" fill="#555">now</text></svg>"##,
        y = HEIGHT - 6.0,
        r = WIDTH - RIGHT,
    ));
    svg
}

/// The waterfall: one column per builder, time running down from now to
/// `hours` ago, each build a bar from its start to its end (or now) in its
/// result's colour, linking to it.
pub fn waterfall(
    columns: &[(shared::ids::BuilderId, &str)],
    builds: &[WindowBuild],
    now: chrono::DateTime<chrono::Utc>,
    hours: u32,
) -> String {
    const COLUMN: f64 = 26.0;
    const HEAD: f64 = 150.0;
    const AXIS: f64 = 70.0;
    const PLOT: f64 = 720.0;
    let width = AXIS + COLUMN * columns.len().max(1) as f64 + 8.0;
    let height = HEAD + PLOT + 8.0;
    let window = f64::from(hours) * 3600.0;
    let y = |at: chrono::DateTime<chrono::Utc>| {
        HEAD + PLOT * ((now - at).num_milliseconds() as f64 / 1000.0 / window).clamp(0.0, 1.0)
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart waterfall" id="waterfall" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="Builds of the last {hours} hours" font-family="sans-serif" font-size="11"><title>Builds of the last {hours} hours, newest at the top</title>"##
    );
    // A line and a label about every twelfth of the window, on round minutes.
    let minutes = hours.saturating_mul(60) / 12;
    let step =
        [5u32, 10, 15, 30, 60, 120, 240, 360, 720, 1440].into_iter().find(|step| *step >= minutes).unwrap_or(1440);
    for tick in (0..=hours.saturating_mul(60)).step_by(step as usize) {
        let at = now - chrono::Duration::minutes(i64::from(tick));
        let line = y(at);
        let _ = write!(
            svg,
            r##"<line x1="{AXIS}" x2="{width}" y1="{line:.1}" y2="{line:.1}" stroke="#eee"/><text x="{x}" y="{ty:.1}" text-anchor="end" fill="#555">{}</text>"##,
            if tick == 0 { "now".to_owned() } else { at.format("%H:%M").to_string() },
            x = AXIS - 4.0,
            ty = line + 4.0,
        );
    }
    let index: std::collections::HashMap<shared::ids::BuilderId, usize> =
        columns.iter().enumerate().map(|(column, (id, _))| (*id, column)).collect();
    for (column, (_, name)) in columns.iter().enumerate() {
        let x = AXIS + COLUMN * column as f64 + COLUMN / 2.0;
        let _ = write!(
            svg,
            r##"<a href="{href}"><text class="builder" transform="translate({tx:.1},{ty}) rotate(-60)" fill="#1565c0">{}</text></a>"##,
            escape(name),
            href = escape(&urls::builder_page(name)),
            tx = x + 3.0,
            ty = HEAD - 4.0,
        );
    }
    for build in builds {
        let Some(&column) = index.get(&build.builder_id) else { continue };
        let name = columns[column].1;
        let top = y(build.complete_at.unwrap_or(now));
        let bottom = y(build.started_at);
        let result = build.results.and_then(Results::from_code).map_or("running", Results::name);
        let took = (build.complete_at.unwrap_or(now) - build.started_at).num_seconds() as f64;
        let _ = write!(
            svg,
            r##"<a href="{href}"><rect class="build" data-builder="{builder}" data-number="{number}" x="{x:.1}" y="{top:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"><title>{builder} #{number} {result}, {took}, started {start}</title></rect></a>"##,
            href = escape(&urls::build_page(name, i64::from(build.number))),
            builder = escape(name),
            number = build.number,
            x = AXIS + COLUMN * column as f64 + 3.0,
            w = COLUMN - 6.0,
            h = (bottom - top).max(3.0),
            fill = colour(build.results),
            took = seconds_text(took),
            start = build.started_at.format("%H:%M:%S UTC"),
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    #[test]
    fn a_builder_chart_has_one_linked_point_per_build_and_escapes_names() {
        let points: Vec<BuildPoint> = (1..=5)
            .map(|number| BuildPoint {
                number,
                started_at: Utc::now(),
                seconds: f64::from(number) * 10.0,
                results: Some(0),
            })
            .collect();
        let svg = builder_durations("a<b", &points);
        assert_eq!(svg.matches("<circle class=\"point\"").count(), 5);
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"), "{svg}");
        assert!(svg.contains("<title>#5 success, 50s</title>"), "{svg}");
        assert!(svg.ends_with("</svg>"));
        assert_eq!(nice_max(43.0), 50.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(seconds_text(184.0), "3m 04s");
    }
}
