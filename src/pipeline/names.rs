//! Free names for `on_conflict=rename`, the way desktop file managers pick them.

/// `report.pdf`, 1 -> `report (1).pdf`; `archive.tar.gz` -> `archive.tar (1).gz`; `.env` -> `.env (1)`.
pub fn numbered_name(name: &str, n: u32) -> String {
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

#[cfg(test)]
mod tests {
    use super::numbered_name;

    #[test]
    fn numbers_go_before_the_extension() {
        assert_eq!(numbered_name("report.pdf", 1), "report (1).pdf");
        assert_eq!(numbered_name("README", 2), "README (2)");
        assert_eq!(numbered_name(".env", 3), ".env (3)");
        assert_eq!(numbered_name("報告書.xlsx", 1), "報告書 (1).xlsx");
    }
}
