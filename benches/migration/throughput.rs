//! Backup throughput against `cp -a` + `sync`.

use super::*;

impl Bench {
    pub fn backup_throughput(&self) -> Vec<Row> {
        let data = self.work.join("gib/data");
        fs::create_dir_all(data.join("member/snap")).unwrap();
        fs::create_dir_all(data.join("member/wal")).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        let mut db = fs::File::create(data.join("member/snap/db")).unwrap();
        for i in 0..896u32 {
            chunk.iter_mut().enumerate().for_each(|(j, b)| *b = (i as usize * 31 + j * 7) as u8);
            db.write_all(&chunk).unwrap();
        }
        // No block of zeros: the copier leaves those unwritten, and this row measures copying.
        for w in 0..2 {
            fs::write(data.join(format!("member/wal/{w}.wal")), vec![w as u8 + 1; 64 << 20]).unwrap();
        }
        let bytes = backup::size_of(&data).unwrap() as f64;
        let policy = BackupPolicy { backup_dir: self.work.join("gib/backups"), retention: 1 };
        let (mut ours, mut cp) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let started = Instant::now();
            backup::create(&data, "bench", &policy).unwrap();
            ours.push(bytes / started.elapsed().as_secs_f64() / 1e6);
            let target = self.work.join("gib/cp");
            let _ = fs::remove_dir_all(&target);
            let started = Instant::now();
            assert!(Command::new("cp").arg("-a").arg(&data).arg(&target).status().unwrap().success());
            assert!(Command::new("sync").status().unwrap().success());
            cp.push(bytes / started.elapsed().as_secs_f64() / 1e6);
        }
        let _ = fs::remove_dir_all(self.work.join("gib"));
        let (ours, cp) = (median(ours), median(cp));
        vec![(
            format!(
                "backup of a {:.2} GiB data dir (hashed as copied, fsynced), median of 3",
                bytes / (1u64 << 30) as f64
            ),
            format!("{ours:.0} MB/s vs {cp:.0} MB/s for cp -a + sync: {:.2}×", ours / cp),
            "≥ 0.8× cp -a + sync".into(),
        )]
    }
}
