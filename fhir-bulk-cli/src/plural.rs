//! Counts in words: `1 file`, `2 files`, `1,405 resources`.

/// `n` with thousands separators: `1,405`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n` and the noun, singular for one: `1 file`, `0 files`, `1,200 resources`.
pub(crate) fn count(n: u64, singular: &str) -> String {
    format!("{} {}", thousands(n), noun(n, singular))
}

/// The noun for `n` of it: `file` or `files` (`entry` becomes `entries`).
pub(crate) fn noun(n: u64, singular: &str) -> String {
    if n == 1 {
        singular.to_owned()
    } else if let Some(stem) = singular.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'o', 'u'])
    {
        format!("{stem}ies")
    } else if singular.ends_with('s') {
        format!("{singular}es")
    } else {
        format!("{singular}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_right() {
        assert_eq!(count(1, "file"), "1 file");
        assert_eq!(count(0, "file"), "0 files");
        assert_eq!(count(2, "resource type"), "2 resource types");
        assert_eq!(count(1405, "resource"), "1,405 resources");
        assert_eq!(count(20_000, "file"), "20,000 files");
        assert_eq!(count(3, "entry"), "3 entries");
        assert_eq!(count(2, "key"), "2 keys");
        assert_eq!(count(2, "issue"), "2 issues");
        assert_eq!(count(1, "OperationOutcome"), "1 OperationOutcome");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
