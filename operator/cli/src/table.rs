//! Tables laid out like kubectl's: upper-case headers, columns padded to their widest
//! cell and three spaces apart, no trailing blanks.

use serde::Serialize;

/// Shown for a cell with no value, as kubectl does.
pub const NONE: &str = "<none>";

/// Renders `rows` under `headers`, each line starting with `indent`.
pub fn render_table(indent: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (column, cell) in row.iter().enumerate() {
            match widths.get_mut(column) {
                Some(width) => *width = (*width).max(cell.chars().count()),
                None => widths.push(cell.chars().count()),
            }
        }
    }
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = indent.to_string();
        for (column, cell) in row.iter().enumerate() {
            if column > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            let width = widths.get(column).copied().unwrap_or(0);
            line.extend(std::iter::repeat_n(
                ' ',
                width.saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A free-text value (a message) as a single table cell.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The name an enum value has in the API (`WaitingApproval`), from its serde form, so the
/// CLI prints exactly what `kubectl get -o yaml` shows.
pub fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => NONE.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maestro_api::RunPhase;

    #[test]
    fn pads_columns_like_kubectl() {
        let table = render_table(
            "",
            &["NAME", "PHASE", "AGE"],
            &[
                vec![
                    "acceptance-tests-x7k2p".into(),
                    "WaitingApproval".into(),
                    "6m".into(),
                ],
                vec!["b".into(), "Running".into(), "10s".into()],
            ],
        );
        assert_eq!(
            table,
            "NAME                     PHASE             AGE\n\
             acceptance-tests-x7k2p   WaitingApproval   6m\n\
             b                        Running           10s\n"
        );
    }

    #[test]
    fn indents_and_leaves_no_trailing_blanks() {
        let table = render_table(
            "  ",
            &["TYPE", "MESSAGE"],
            &[vec!["Ready".into(), String::new()]],
        );
        assert_eq!(table, "  TYPE    MESSAGE\n  Ready\n");
    }

    #[test]
    fn flattens_messages_and_names_enums() {
        assert_eq!(one_line("exit code 2:\n  boom  "), "exit code 2: boom");
        assert_eq!(wire_name(&RunPhase::WaitingApproval), "WaitingApproval");
    }
}
