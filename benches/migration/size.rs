//! The size of the static release binary.

use super::*;

impl Bench {
    pub fn binary_size(&self) -> Row {
        let output = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("image/build-binary.sh"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let path = String::from_utf8(output.stdout).unwrap();
        let size = fs::metadata(Path::new(env!("CARGO_MANIFEST_DIR")).join(path.trim())).unwrap().len();
        (
            "static release binary (+crt-static, LTO, stripped)".into(),
            format!("{:.2} MiB", size as f64 / (1u64 << 20) as f64),
            "≤ 8 MiB".into(),
        )
    }
}
