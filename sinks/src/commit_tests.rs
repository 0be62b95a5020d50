//! Tests of the checkpoint log: state files, recovery, and commits of a coordinator.

use super::*;
use crate::lake::test_uploader;

fn write(dir: &std::path::Path, rel: &str, body: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

#[test]
fn a_multipart_upload_listing_is_read_with_its_keys_and_ids() {
    let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>lake</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <Prefix>jobs/_fleetflow/</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>
  <Upload><Key>jobs/_fleetflow/staging/a&amp;b.parquet</Key><UploadId>id-1</UploadId>
<Initiator><ID>x</ID></Initiator><StorageClass>STANDARD</StorageClass></Upload>
  <Upload><Key>jobs/_fleetflow/staging/c.parquet</Key><UploadId>id-2</UploadId></Upload>
</ListMultipartUploadsResult>"#;
    use crate::staging::ListMultipartUploadsResult;
    let listed: ListMultipartUploadsResult = quick_xml::de::from_str(body).unwrap();
    let got: Vec<(String, String)> = listed
        .uploads
        .into_iter()
        .map(|u| (u.key, u.upload_id))
        .collect();
    assert_eq!(
        got,
        [
            ("jobs/_fleetflow/staging/a&b.parquet".into(), "id-1".into()),
            ("jobs/_fleetflow/staging/c.parquet".into(), "id-2".into())
        ]
    );
    let none: ListMultipartUploadsResult = quick_xml::de::from_str(
        "<ListMultipartUploadsResult><Bucket>l</Bucket></ListMultipartUploadsResult>",
    )
    .unwrap();
    assert!(none.uploads.is_empty());
}

#[test]
fn the_state_file_is_the_pieces_encoded_whole() {
    let pieces: Vec<(Participant, Vec<u8>)> = vec![
        (("timeline".into(), 0), (0..=255).collect()),
        (("sink".into(), 300), vec![]),
        (("input".into(), 1), vec![7; 70_000]),
    ];
    // The same bytes, in chunks (as a large snapshot is written) and whole.
    let blobs: Vec<(Participant, Blob)> = pieces
        .iter()
        .map(|(p, b)| {
            let chunks = b.chunks(100).map(Bytes::copy_from_slice).collect();
            (p.clone(), Blob::from_chunks(chunks))
        })
        .chain(
            pieces
                .iter()
                .map(|(p, b)| (p.clone(), Blob::from(b.clone()))),
        )
        .collect();
    let payload = state_payload(&blobs);
    let written: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
    let twice: Vec<_> = pieces.iter().chain(&pieces).cloned().collect();
    assert_eq!(written, postcard::to_stdvec(&twice).unwrap());
}

#[test]
fn recovery_reapplies_the_newest_commit_idempotently_and_drops_unreferenced_staging() {
    let dir = tempfile::tempdir().unwrap();
    let (uploader, _, rt) = test_uploader(dir.path());
    let lake = uploader.lake().clone();
    let pieces: Vec<((String, usize), Vec<u8>)> = vec![
        (("source".into(), 0), vec![1, 2, 3]),
        (("lake".into(), 1), vec![4]),
    ];
    write(
        dir.path(),
        "_fleetflow/state/00000000000000002000.bin",
        &postcard::to_allocvec(&pieces).unwrap(),
    );
    let staged = |n: &str| format!("{STAGING}/raw/date=2025-01-06/hour=01/{n}.parquet");
    for n in ["published", "chunk", "orphan"] {
        write(dir.path(), &staged(n), n.as_bytes());
    }
    write(dir.path(), &format!("{STAGING}/raw/x.parquet#7"), b"temp");
    write(
        dir.path(),
        "raw/date=2025-01-05/hour=23/old.parquet",
        b"old",
    );
    let old = Commit {
        seq: 1,
        state: "_fleetflow/state/00000000000000001000.bin".into(),
        ..Commit::default()
    };
    let commit = Commit {
        version: FORMAT_VERSION,
        seq: 2,
        boundary: 2000,
        state: "_fleetflow/state/00000000000000002000.bin".into(),
        staged: vec![staged("chunk")],
        publish: vec![Pending {
            from: staged("published"),
            to: "raw/date=2025-01-06/hour=01/a.parquet".into(),
            dataset: "raw".into(),
            rows: 9,
        }],
        delete: vec!["raw/date=2025-01-05/hour=23/old.parquet".into()],
        ..Commit::default()
    };
    for c in [&old, &commit] {
        write(
            dir.path(),
            &log_path(c.seq),
            &serde_json::to_vec(c).unwrap(),
        );
    }
    for _ in 0..2 {
        let recovered = recover(&lake, rt.handle(), &crate::table::HiveDirectories)
            .unwrap()
            .expect("a checkpoint");
        assert_eq!(recovered.commit, commit, "the newest record");
        assert_eq!(recovered.pieces, pieces);
        assert_eq!(
            std::fs::read(dir.path().join("raw/date=2025-01-06/hour=01/a.parquet")).unwrap(),
            b"published"
        );
        assert!(!dir.path().join(staged("published")).exists());
        assert!(!dir
            .path()
            .join("raw/date=2025-01-05/hour=23/old.parquet")
            .exists());
    }
    let keep: BTreeSet<String> = commit.staged.iter().cloned().collect();
    assert_eq!(clean_staging(&lake, rt.handle(), &keep).unwrap(), 2);
    assert!(dir.path().join(staged("chunk")).exists(), "referenced");
    assert!(!dir.path().join(staged("orphan")).exists());
    assert!(!dir
        .path()
        .join(format!("{STAGING}/raw/x.parquet#7"))
        .exists());
}

#[test]
fn a_lake_without_a_log_has_nothing_to_recover() {
    let dir = tempfile::tempdir().unwrap();
    let (uploader, _, rt) = test_uploader(dir.path());
    assert!(
        recover(uploader.lake(), rt.handle(), &crate::table::HiveDirectories)
            .unwrap()
            .is_none()
    );
}

/// The hour of the rows of [`rolled`] files: 2025-01-06T01:00:00Z.
const T: Millis = 1_736_125_200_000;

/// A file of 100 rows of hour `T` rolled by `worker`'s writer of the raw dataset.
fn rolled(uploader: &Uploader, worker: usize) -> Pending {
    use crate::writer::{DatasetWriter, MergeLane, RollPolicy};
    use fleetflow_types::fix::Fix;
    let mut w = DatasetWriter::<Fix>::new(
        "raw",
        crate::catalogue::Partitioning::Hour,
        "part".into(),
        worker,
        uploader.clone(),
    );
    let policy = RollPolicy {
        target_bytes: 1 << 30,
        max_age: Duration::from_secs(3600),
    };
    let mut out = Vec::new();
    for i in 0..100 {
        let fix = Fix {
            vehicle_id: format!("V{worker}").into(),
            tenant: "t".into(),
            ts: T + i * 1000,
            lat: 1.0,
            lon: 2.0,
            speed_kmh: Some(5.0),
            heading_deg: None,
            fuel_level_pct: None,
            fuel_used_l: None,
            odometer_km: None,
            ignition: None,
        };
        w.push(fix.ts, fix, &policy, &mut out).unwrap();
    }
    w.cut_tails().unwrap();
    let closed = Some(T + fleetflow_types::time::HOUR_MS);
    w.cut_roll(closed, &policy, true, &MergeLane::default(), &mut out)
        .unwrap();
    uploader.finish().unwrap();
    assert_eq!(out.len(), 1);
    out.pop().unwrap()
}

/// A sink on a process of a cluster learns late that a checkpoint listing its rolled files
/// was taken, so it lists them in later snapshots too; meanwhile the compaction after the
/// commit that published them merged them into one file and removed them from the table.
/// No later commit adds them to the table again (their rows would be there twice).
#[test]
fn files_a_lagging_sink_lists_again_are_published_once_even_after_compaction() {
    use crate::delta::DeltaTables;
    let dir = tempfile::tempdir().unwrap();
    let (uploader, _, rt) = test_uploader(dir.path());
    let lake = uploader.lake().clone();
    let catalogue = Catalogue::new(true, &[]);
    let tables = Arc::new(DeltaTables::new(&lake, catalogue.clone(), "job").unwrap());
    let files: Vec<Pending> = (0..2).map(|w| rolled(&uploader, w)).collect();
    let hub = Arc::new(Hub::new(100, vec![(SNAPSHOT_OP.into(), 0)], 0));
    let coordinator = Coordinator {
        lake: lake.clone(),
        hub: hub.clone(),
        uploader: uploader.clone(),
        metrics: Arc::new(Metrics::new(catalogue.names())),
        datasets: catalogue,
        tables: tables.clone(),
        job: ("job".into(), vec!["in".into()]),
        target_bytes: 1 << 20,
        previous: None,
        on_commit: None,
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = std::thread::spawn(move || coordinator.run(stop));
    // The hour is closed at every checkpoint, and both files are listed at three of them.
    let snapshot = SinkSnapshot {
        clock: Some(T + 2 * fleetflow_types::time::HOUR_MS),
        pending: files.clone(),
        ..SinkSnapshot::default()
    };
    let blob = postcard::to_stdvec(&snapshot).unwrap();
    for (seq, (lo, hi)) in [
        (100, 100),
        (200, 200),
        (300, fleetflow_runtime::checkpoint::FINAL),
    ]
    .into_iter()
    .enumerate()
    {
        hub.offer(SNAPSHOT_OP, 0, lo, hi, blob.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !dir.path().join(log_path(seq as u64 + 1)).exists() {
            assert!(std::time::Instant::now() < deadline, "commit {}", seq + 1);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let last = running.join().unwrap().unwrap().expect("committed");
    assert!(last.last);
    let active = rt
        .block_on(tables.files(&*lake.store, "raw", "raw"))
        .unwrap();
    let names: Vec<&str> = active.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        ["raw/date=2025-01-06/hour=01/compacted-000001-0.parquet"],
        "the two files merged, and only the merged file in the table"
    );
    use parquet::file::reader::FileReader;
    let merged = std::fs::File::open(dir.path().join(names[0])).unwrap();
    let merged = parquet::file::reader::SerializedFileReader::new(merged).unwrap();
    assert_eq!(merged.metadata().file_metadata().num_rows(), 200);
    let read = |c: u64| -> Commit {
        let body = std::fs::read(dir.path().join(log_path(c))).unwrap();
        serde_json::from_slice(&body).unwrap()
    };
    assert_eq!(read(1).publish, files, "published by the first commit");
    assert_eq!(read(2).delete.len(), 2, "merged away by the second");
    assert!(
        read(3).publish.is_empty(),
        "and not published again: {:?}",
        read(3).publish
    );
}
