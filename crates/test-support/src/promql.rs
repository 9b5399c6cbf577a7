//! What a PromQL expression (a dashboard's query, an alert or recording rule) asks of Baton's
//! metrics: the `baton_...` series and `baton:...` recorded series it names, and the label names it
//! matches, groups or joins on. A lexical reading, enough to check queries against `/metrics`; it
//! is not a PromQL parser (`promtool check rules` is the real one).

use std::collections::BTreeMap;

/// `baton_...` and `baton:...` identifiers in `expr` (label values in quotes are skipped), in order,
/// each once.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for word in words(&unquoted(expr)) {
        if (word.starts_with("baton_") || word.starts_with("baton:")) && !names.contains(&word) {
            names.push(word);
        }
    }
    names
}

/// Label names in `{matchers}` and in `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`,
/// `group_left (...)` and `group_right (...)`.
pub fn label_names(expr: &str) -> Vec<String> {
    let expr = unquoted(expr);
    let mut labels = Vec::new();
    for part in expr.split('{').skip(1) {
        let matchers = part.split('}').next().unwrap_or("");
        for m in matchers.split(',') {
            let name: String = m
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                labels.push(name);
            }
        }
    }
    let keywords = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    let mut rest = expr.as_str();
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        rest = &rest[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        rest = after;
        if keywords.contains(&word)
            && let Some(list) = rest.trim_start().strip_prefix('(')
        {
            let list = list.split(')').next().unwrap_or("");
            labels.extend(list.split(',').map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()));
        }
    }
    labels
}

/// Series name -> the label names it has, from Prometheus/OpenMetrics text (what `/metrics` serves).
pub fn served_series(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut series: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let sample = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = sample.split_once('{').unwrap_or((sample, ""));
        let names = series.entry(name.to_owned()).or_default();
        for pair in labels.trim_end_matches('}').split("\",") {
            if let Some((label, _)) = pair.split_once('=') {
                let label = label.trim().to_owned();
                if !names.contains(&label) {
                    names.push(label);
                }
            }
        }
    }
    series
}

/// `expr` with every double-quoted string emptied (label values may hold anything).
fn unquoted(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut quoted = false;
    let mut escaped = false;
    for c in expr.chars() {
        if quoted {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    quoted = false;
                    out.push('"');
                }
                _ => escaped = false,
            }
        } else {
            quoted = c == '"';
            out.push(c);
        }
    }
    out
}

fn words(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_of_an_expression() {
        let expr = r#"sum by (job, reason) (rate(baton_checks_total{decision="deny",reason!~"baton_x{,}"}[5m]))
            / on (job) group_left (reason) baton:denials:rate1h unless ignoring(outcome) baton_up"#;
        assert_eq!(
            metric_names(expr),
            ["baton_checks_total", "baton:denials:rate1h", "baton_up"]
        );
        assert_eq!(
            label_names(expr),
            ["decision", "reason", "job", "reason", "job", "reason", "outcome"]
        );
        // `on` inside a name is not the keyword.
        assert!(label_names("baton_x_on (y)").is_empty());
    }

    #[test]
    fn series_and_their_labels_from_metrics_text() {
        let text =
            "# TYPE baton_checks counter\nbaton_checks_total{api=\"check\",reason=\"a,b\"} 1\nbaton_cache_entries 0\n";
        let series = served_series(text);
        assert_eq!(series["baton_checks_total"], ["api", "reason"]);
        assert!(series["baton_cache_entries"].is_empty());
    }
}
