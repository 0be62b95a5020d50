//! Apache Kafka for the end-to-end tests and benches: a single-node KRaft broker (broker and
//! controller in one JVM) on loopback, from the jars `scripts/setup` resolves from Maven
//! Central (`scripts/kafka/pom.xml`), and Kafka's own command-line tools from the same jars.
//!
//! The class path comes from `FLEETFLOW_KAFKA_CLASSPATH`, or from the file
//! `~/.cache/fleetflow-kafka/classpath` that `scripts/setup` writes; `java` from
//! `JAVA_HOME` or the `PATH`. `FLEETFLOW_KAFKA_GC_LOG=FILE` logs the broker's garbage
//! collections (with their pauses) to `FILE`.

use super::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One Apache Kafka broker process with its own log directory, stopped when dropped. Its
/// storage survives [`KafkaBroker::stop`] and [`KafkaBroker::restart`].
pub struct KafkaBroker {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

/// The jars of the broker and its tools, joined with `:`.
fn classpath() -> String {
    if let Ok(cp) = std::env::var("FLEETFLOW_KAFKA_CLASSPATH") {
        return cp;
    }
    let file = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/fleetflow-kafka/classpath");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| {
            panic!(
                "Apache Kafka's class path {}: {e} (scripts/setup resolves it from Maven Central)",
                file.display()
            )
        })
        .trim()
        .to_string()
}

/// The broker's JVM options: those Apache Kafka's own start scripts give it
/// (`kafka-server-start.sh`'s heap, `kafka-run-class.sh`'s performance options), so that the
/// broker in the tests and benches is the one users run. G1's own default pause target
/// (200 ms) let the broker's collections hold produced messages for tens of milliseconds.
const BROKER_JVM_OPTIONS: [&str; 9] = [
    "-Xms1g",
    "-Xmx1g",
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
];

/// `java` with the broker's class path.
fn java() -> Command {
    let java = std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|j| j.exists())
        .unwrap_or_else(|| PathBuf::from("java"));
    let mut c = Command::new(java);
    c.arg("-cp").arg(classpath());
    c
}

/// A random Kafka cluster id: 16 bytes in unpadded URL-safe base64.
fn cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits: u128 = rand::random();
    // 21 characters carry the top 126 bits; the 22nd the low 2 bits, shifted left by 4
    // as base64 pads them.
    (0..21)
        .map(|i| ((bits >> (122 - 6 * i)) & 63) as usize)
        .chain([((bits & 3) << 4) as usize])
        .map(|c| ALPHABET[c] as char)
        .collect()
}

impl KafkaBroker {
    /// Formats an empty log directory and starts the broker on a free loopback port.
    pub fn start() -> KafkaBroker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let controller = free_port();
        let data = dir.path().join("data");
        let properties = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             log.dirs={}\n\
             num.network.threads=2\n\
             num.io.threads=2\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=1\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=1\n\
             group.initial.rebalance.delay.ms=0\n\
             auto.create.topics.enable=false\n",
            data.display()
        );
        std::fs::write(dir.path().join("server.properties"), properties).unwrap();
        std::fs::write(
            dir.path().join("log4j2.properties"),
            format!(
                "status = error\n\
                 appender.file.type = File\n\
                 appender.file.name = file\n\
                 appender.file.fileName = {}\n\
                 appender.file.layout.type = PatternLayout\n\
                 appender.file.layout.pattern = [%d] %p %m (%c)%n\n\
                 rootLogger.level = info\n\
                 rootLogger.appenderRef.file.ref = file\n",
                dir.path().join("broker.log").display()
            ),
        )
        .unwrap();
        let out = java()
            // `=`: an id may begin with `-`, which would read as an option.
            .args(["kafka.tools.StorageTool", "format"])
            .arg(format!("--cluster-id={}", cluster_id()))
            .arg("-c")
            .arg(dir.path().join("server.properties"))
            .output()
            .expect("java (Java 17 or newer) for the Apache Kafka broker");
        assert!(
            out.status.success(),
            "formatting the broker's storage: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut broker = KafkaBroker {
            child: None,
            dir,
            port,
        };
        broker.restart();
        broker
    }

    /// `host:port`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The end of the broker's log file (for failure messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Stops the broker process (SIGKILL); its storage stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker process again on the same port and storage, and waits until it
    /// answers metadata requests.
    pub fn restart(&mut self) {
        self.stop();
        let child = java()
            .args(BROKER_JVM_OPTIONS)
            .args(
                // The broker's garbage collections, one line each with its pause (for a
                // bench that needs to know what the broker did when).
                std::env::var("FLEETFLOW_KAFKA_GC_LOG")
                    .ok()
                    .map(|path| format!("-Xlog:gc:file={path}:uptime,time")),
            )
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.path().join("log4j2.properties").display()
            ))
            .arg("kafka.Kafka")
            .arg(self.dir.path().join("server.properties"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("java (Java 17 or newer) for the Apache Kafka broker");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the broker is the leader of its cluster's metadata and answers.
    fn wait_ready(&mut self) {
        use fleetflow_connectors::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = fleetflow_connectors::kafka::rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("log_level", "0")
            .create()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the Kafka broker exited ({status}):\n{}", self.log_tail());
            }
            if let Ok(md) = consumer.fetch_metadata(None, Duration::from_secs(2)) {
                if !md.brokers().is_empty() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the Kafka broker did not start:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs one of Kafka's command-line tools (a class of the broker's jars, such as
    /// `org.apache.kafka.tools.TopicCommand`) against this broker; its standard output.
    pub fn tool(&self, class: &str, args: &[&str]) -> String {
        let out = java()
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.path().join("log4j2.properties").display()
            ))
            .arg(class)
            .args(["--bootstrap-server", &self.brokers()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{class} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a topic with `partitions` partitions (Kafka's `kafka-topics.sh --create`).
    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.tool(
            "org.apache.kafka.tools.TopicCommand",
            &[
                "--create",
                "--topic",
                name,
                "--partitions",
                &partitions.to_string(),
            ],
        );
    }

    /// The committed offsets of consumer group `group` as Kafka's own
    /// `kafka-consumer-groups.sh --describe` reports them: `(topic, partition) -> (current
    /// offset, log end offset)`, the current offset `None` where it shows `-`.
    pub fn group_offsets(
        &self,
        group: &str,
    ) -> std::collections::BTreeMap<(String, i32), (Option<i64>, i64)> {
        let out = self.tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            &["--describe", "--group", group],
        );
        // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() >= 5 && f[0] == group)
            .map(|f| {
                (
                    (f[1].to_string(), f[2].parse().unwrap()),
                    (f[3].parse().ok(), f[4].parse().unwrap()),
                )
            })
            .collect()
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.stop();
    }
}
