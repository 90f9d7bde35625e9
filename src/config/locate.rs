//! Finding a key's line in the YAML text, so an error names the line as well as the key.

/// The 1-based line holding `key` (`routes[0].upstream.targets[1]`) in YAML `text`, for error
/// messages. A best effort over block and flow style: `None` rather than a wrong line.
pub(super) fn line_of(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let blank = |l: &str| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    };
    // The line found so far, and the indentation its children must exceed.
    let (mut at, mut scope): (Option<usize>, Option<usize>) = (None, None);
    for part in key.split('.') {
        let (name, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let start = at.unwrap_or(0);
        let found = (start..lines.len()).find(|&i| {
            let l = lines[i];
            let body = l.trim_start().trim_start_matches("- ");
            let here = body.starts_with(&format!("{name}:"))
                || l.contains(&format!("{{{name}:"))
                || l.contains(&format!(" {name}:"));
            here && (i == start || scope.is_none_or(|s| indent(l) > s || l.contains('{')))
        })?;
        if let Some(s) = scope {
            // Leaving the parent's block on the way means the key is not under it.
            let left = (start + 1..found).any(|i| !blank(lines[i]) && indent(lines[i]) <= s);
            if left {
                return None;
            }
        }
        at = Some(found);
        scope = Some(indent(lines[found]));
        for index in indices
            .split(']')
            .filter_map(|x| x.strip_prefix('['))
            .map(|x| x.parse::<usize>().ok())
        {
            let index = index?;
            let line = at?;
            if lines[line].contains('[') {
                // A flow list: every item is on this line.
                break;
            }
            let items: Vec<usize> = (line + 1..lines.len())
                .take_while(|&i| {
                    blank(lines[i])
                        || indent(lines[i]) > indent(lines[line])
                        || lines[i].trim_start().starts_with("- ")
                })
                .filter(|&i| lines[i].trim_start().starts_with("- "))
                .collect();
            let item_indent = indent(lines[*items.first()?]);
            let item = *items
                .iter()
                .filter(|&&i| indent(lines[i]) == item_indent)
                .nth(index)?;
            at = Some(item);
            scope = Some(item_indent);
        }
    }
    at.map(|i| i + 1)
}
