//! Rendering and printing: tables, legends, JSON, the console.
//!
//! Tables follow Go's `text/tabwriter` as the original configures it:
//! minwidth 0, tabwidth 8, padding 1, **padchar `\t`**, no flags. The Rust
//! `tabwriter` crate pads only with spaces, so [`render_table`] is a small port
//! of Go's column-block algorithm instead; golden tests below pin the bytes.
//!
//! Rendering is pure (strings in, string out). [`Console`] is the only place
//! that writes to stdout and stderr; a closed stdout (`| head`) ends the
//! process quietly with status 0.

use std::io::{self, IsTerminal, Write};

use fleet_api::entities::Machine;

/// Go tabwriter settings used by the original fleetctl.
const TAB_WIDTH: usize = 8;
const PADDING: usize = 1;
const MIN_WIDTH: usize = 0;

/// Renders rows of cells as Go's tabwriter would render the text
/// `cell\tcell\t...\tlast\n` per row with the original's settings.
pub fn render_table(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    // Go flushes the buffer at a line with a single cell (no tab), so such a
    // line ends an alignment batch.
    let mut batch: Vec<&Vec<String>> = Vec::new();
    for row in rows {
        batch.push(row);
        if row.len() <= 1 {
            format_batch(&batch, &mut out);
            batch.clear();
        }
    }
    format_batch(&batch, &mut out);
    out
}

fn cell_width(text: &str) -> usize {
    text.chars().count()
}

fn format_batch(lines: &[&Vec<String>], out: &mut String) {
    let mut widths = Vec::new();
    format_block(lines, 0, lines.len(), &mut widths, out);
}

/// Go's `Writer.format`: finds column blocks recursively and writes them.
fn format_block(
    lines: &[&Vec<String>],
    mut line0: usize,
    line1: usize,
    widths: &mut Vec<usize>,
    out: &mut String,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        // This line has a cell in `column`: it starts a column block.
        write_lines(lines, line0, this, widths, out);
        line0 = this;
        let mut width = MIN_WIDTH;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(cell_width(&lines[this][column]) + PADDING);
            this += 1;
        }
        widths.push(width);
        format_block(lines, line0, this, widths, out);
        widths.pop();
        line0 = this;
    }
    write_lines(lines, line0, line1, widths, out);
}

fn write_lines(
    lines: &[&Vec<String>],
    line0: usize,
    line1: usize,
    widths: &[usize],
    out: &mut String,
) {
    for line in &lines[line0..line1] {
        for (cell_idx, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if let Some(&width) = widths.get(cell_idx)
                && cell_idx + 1 < line.len()
            {
                push_tab_padding(cell_width(cell), width, out);
            }
        }
        out.push('\n');
    }
}

/// Go's `writePadding` with padchar `\t`: pad to the next multiple of the tab
/// width at or after the cell width, using whole tabs.
fn push_tab_padding(text_width: usize, cell_width: usize, out: &mut String) {
    let cell_width = cell_width.div_ceil(TAB_WIDTH) * TAB_WIDTH;
    let n_pad = cell_width - text_width.min(cell_width);
    for _ in 0..n_pad.div_ceil(TAB_WIDTH) {
        out.push('\t');
    }
}

/// A table: optional header (upper-cased field names) plus rows.
pub fn render_fields_table(fields: &[String], rows: Vec<Vec<String>>, legend: bool) -> String {
    let mut all = Vec::with_capacity(rows.len() + 1);
    if legend {
        all.push(fields.iter().map(|f| f.to_uppercase()).collect());
    }
    all.extend(rows);
    render_table(&all)
}

/// How a list command prints (`--output`, new: the original only had tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

impl Format {
    /// # Errors
    /// A message naming the bad value.
    pub fn parse(value: &str) -> Result<Format, String> {
        match value {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            _ => Err(format!(
                "invalid output format {value:?}: expected table or json"
            )),
        }
    }
}

/// The output format and the fields of a list command, or the message that
/// says which of the two is wrong.
///
/// # Errors
/// The message of [`Format::parse`] or [`parse_fields`].
pub fn list_layout(
    output: &str,
    fields: &str,
    valid: &[&str],
) -> Result<(Format, Vec<String>), String> {
    Ok((Format::parse(output)?, parse_fields(fields, valid)?))
}

/// Checks a `--fields` list against the valid field names, with the
/// original's messages.
///
/// # Errors
/// `Must define output format` or `Invalid key in output format: "<f>"`.
pub fn parse_fields(spec: &str, valid: &[&str]) -> Result<Vec<String>, String> {
    if spec.is_empty() {
        return Err("Must define output format".to_owned());
    }
    spec.split(',')
        .map(|field| {
            if valid.contains(&field) {
                Ok(field.to_owned())
            } else {
                Err(format!("Invalid key in output format: {field:?}"))
            }
        })
        .collect()
}

/// Pretty JSON of API entities, with a final newline.
pub fn render_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing our own entity types cannot fail (string keys, no floats).
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".to_owned());
    text.push('\n');
    text
}

/// The original's `ShortID`: the first 8 characters of a machine ID.
pub fn short_id(machine_id: &str) -> &str {
    match machine_id.char_indices().nth(8) {
        Some((idx, _)) => &machine_id[..idx],
        None => machine_id,
    }
}

/// `machineIDLegend`: the full ID, or the short ID followed by `...`.
pub fn machine_id_legend(machine_id: &str, full: bool) -> String {
    if full {
        machine_id.to_owned()
    } else {
        format!("{}...", short_id(machine_id))
    }
}

/// `machineFullLegend`: the ID legend plus `/<ip>` when the IP is known.
pub fn machine_full_legend(machine_id: &str, primary_ip: &str, full: bool) -> String {
    let legend = machine_id_legend(machine_id, full);
    if primary_ip.is_empty() {
        legend
    } else {
        format!("{legend}/{primary_ip}")
    }
}

/// Machines' IPs by id, looked up once per table row: a search of the
/// machine list per row made `list-units` of 100,000 units on 10,000
/// machines quadratic (seconds of string compares).
pub struct MachineIps<'a>(std::collections::HashMap<&'a str, &'a str>);

impl<'a> MachineIps<'a> {
    pub fn new(machines: &'a [Machine]) -> MachineIps<'a> {
        MachineIps(
            machines
                .iter()
                .map(|m| (m.id.as_str(), m.primary_ip.as_str()))
                .collect(),
        )
    }
}

/// The legend of a machine known by ID, using its IP when the machine is
/// known.
pub fn legend_for(machine_id: &str, machines: &MachineIps, full: bool) -> String {
    let ip = machines.0.get(machine_id).copied().unwrap_or("");
    machine_full_legend(machine_id, ip, full)
}

/// `k=v` pairs sorted by key, joined with `,` (or `-` when empty).
pub fn format_metadata(metadata: &std::collections::BTreeMap<String, String>) -> String {
    if metadata.is_empty() {
        return "-".to_owned();
    }
    metadata
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `-` for an empty value, as every table column shows missing data.
pub fn or_dash(value: &str) -> String {
    if value.is_empty() {
        "-".to_owned()
    } else {
        value.to_owned()
    }
}

/// Go's `%v` of a `[]string`: `[a b c]`.
pub fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// The one writer of stdout and stderr.
#[derive(Clone, Copy, Debug, Default)]
pub struct Console;

impl Console {
    /// One line of data on stdout.
    pub fn out(&self, line: &str) {
        self.out_raw(&format!("{line}\n"));
    }

    /// Text on stdout exactly as given (tables, `cat`).
    pub fn out_raw(&self, text: &str) {
        let mut stdout = io::stdout().lock();
        let written = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush());
        // A closed pipe (`fleetctl list-units | head`) is not an error.
        if let Err(error) = written
            && error.kind() == io::ErrorKind::BrokenPipe
        {
            std::process::exit(0);
        }
    }

    /// One line of an error, warning or progress on stderr.
    pub fn err(&self, line: &str) {
        let mut stderr = io::stderr().lock();
        // Nothing sensible remains to be done when stderr itself is gone.
        let _ = writeln!(stderr, "{line}");
    }

    /// Whether stderr is a terminal (progress lines are redrawn in place there).
    pub fn stderr_is_terminal(&self) -> bool {
        io::stderr().is_terminal()
    }

    /// A progress line: redrawn in place on a terminal, a plain line otherwise.
    pub fn progress(&self, line: &str) {
        if self.stderr_is_terminal() {
            let mut stderr = io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K{line}");
            let _ = stderr.flush();
        } else {
            self.err(line);
        }
    }

    /// Clears a progress line drawn on a terminal.
    pub fn progress_done(&self) {
        if self.stderr_is_terminal() {
            let mut stderr = io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(table: &[&[&str]]) -> Vec<Vec<String>> {
        table
            .iter()
            .map(|row| row.iter().map(|c| (*c).to_owned()).collect())
            .collect()
    }

    #[test]
    fn tables_are_tab_padded_like_go_tabwriter() {
        let cases: &[(&[&[&str]], &str)] = &[
            // Widest cell of column 0 is 13 + padding 1 = 14 -> 16: UNIT gets 2 tabs.
            (
                &[
                    &["UNIT", "MACHINE", "ACTIVE", "SUB"],
                    &[
                        "hello.service",
                        "113f16a7.../172.17.8.103",
                        "active",
                        "running",
                    ],
                ],
                "UNIT\t\tMACHINE\t\t\t\tACTIVE\tSUB\nhello.service\t113f16a7.../172.17.8.103\tactive\trunning\n",
            ),
            // A cell of exactly 8 characters needs 9 columns: two tabs.
            (&[&["12345678", "x"], &["a", "y"]], "12345678\tx\na\t\ty\n"),
            // Single-column output: no padding at all.
            (&[&["UNIT"], &["a.service"]], "UNIT\na.service\n"),
            // Empty input: nothing.
            (&[], ""),
        ];
        for (input, expected) in cases {
            assert_eq!(render_table(&rows(input)), *expected, "input {input:?}");
        }
    }

    #[test]
    fn ragged_rows_form_column_blocks() {
        // Go aligns column 1 only over consecutive lines that have it.
        let input = rows(&[&["a", "bb", "c"], &["aaaaaaaaaa", "b"], &["x"], &["y", "z"]]);
        assert_eq!(render_table(&input), "a\t\tbb\tc\naaaaaaaaaa\tb\nx\ny\tz\n");
    }

    #[test]
    fn header_is_upper_cased_and_optional() {
        let fields = vec!["unit".to_owned(), "hash".to_owned()];
        let data = rows(&[&["a.service", "1c6fb6f"]]);
        assert_eq!(
            render_fields_table(&fields, data.clone(), true),
            "UNIT\t\tHASH\na.service\t1c6fb6f\n"
        );
        assert_eq!(
            render_fields_table(&fields, data, false),
            "a.service\t1c6fb6f\n"
        );
    }

    #[test]
    fn legends() {
        let id = "113f16a7e4bd4a9a8d6c3a1d3bb6a4c2";
        assert_eq!(machine_id_legend(id, false), "113f16a7...");
        assert_eq!(machine_id_legend(id, true), id);
        assert_eq!(
            machine_full_legend(id, "10.0.0.1", false),
            "113f16a7.../10.0.0.1"
        );
        assert_eq!(machine_full_legend("abc", "", false), "abc...");
        let machines = vec![Machine {
            id: id.to_owned(),
            primary_ip: "10.0.0.2".to_owned(),
            ..Machine::default()
        }];
        assert_eq!(
            legend_for(id, &MachineIps::new(&machines), true),
            format!("{id}/10.0.0.2")
        );
        assert_eq!(
            legend_for("other123456", &MachineIps::new(&machines), false),
            "other123..."
        );
    }

    #[test]
    fn fields_and_formats() {
        let valid = ["machine", "ip", "metadata"];
        assert_eq!(
            parse_fields("ip,machine", &valid).unwrap(),
            ["ip", "machine"]
        );
        assert_eq!(
            parse_fields("", &valid).unwrap_err(),
            "Must define output format"
        );
        assert_eq!(
            parse_fields("machine,bogus", &valid).unwrap_err(),
            r#"Invalid key in output format: "bogus""#
        );
        assert_eq!(Format::parse("json"), Ok(Format::Json));
        assert!(Format::parse("yaml").is_err());
        assert_eq!(render_json(&Vec::<Machine>::new()), "[]\n");
    }

    #[test]
    fn metadata_and_lists() {
        let mut metadata = std::collections::BTreeMap::new();
        assert_eq!(format_metadata(&metadata), "-");
        metadata.insert("region".to_owned(), "us-west".to_owned());
        metadata.insert("az".to_owned(), "1".to_owned());
        assert_eq!(format_metadata(&metadata), "az=1,region=us-west");
        assert_eq!(go_list(&["a".to_owned(), "b".to_owned()]), "[a b]");
        assert_eq!(go_list(&[]), "[]");
        assert_eq!(or_dash(""), "-");
    }
}
