//! `--cpus`: the CPUs a node's threads may run on.
//!
//! The node's storage runs every read and write of its archives on tokio's blocking pool, so a
//! catch-up hands work between threads thousands of times a second. When those threads sit on
//! different CPUs, each hand-off wakes another CPU, which a virtual machine pays for with an
//! exit to its host. Restricting the node to a set of CPUs (one, on a small machine shared with
//! an upstream) keeps the hand-offs local.

use eyre::eyre;
use std::{fmt, str::FromStr};

/// A set of CPUs, written as a list of numbers and ranges: `0`, `0-3`, `0,2,4-5`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList {
    /// The CPUs, ascending, each once.
    cpus: Vec<usize>,
}

/// Highest CPU number a list may name (the kernel's affinity masks hold 1,024 CPUs).
const MAX_CPU: usize = 1023;

impl FromStr for CpuList {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let number = |text: &str| -> Result<usize, String> {
            let cpu: usize = text
                .trim()
                .parse()
                .map_err(|_| format!("`{text}` is not a CPU number (a list looks like 0,2-3)"))?;
            if cpu > MAX_CPU {
                return Err(format!(
                    "CPU {cpu} is above the highest possible, {MAX_CPU}"
                ));
            }
            Ok(cpu)
        };
        let mut cpus = Vec::new();
        for item in value.split(',') {
            match item.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (number(first)?, number(last)?);
                    if first > last {
                        return Err(format!("the range {first}-{last} runs backwards"));
                    }
                    cpus.extend(first..=last);
                }
                None => cpus.push(number(item)?),
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(Self { cpus })
    }
}

impl fmt::Display for CpuList {
    /// The list in its shortest form: consecutive CPUs as ranges (`0-3,6`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.cpus.iter().copied().peekable();
        let mut first_item = true;
        while let Some(first) = rest.next() {
            let mut last = first;
            while rest.peek() == Some(&(last + 1)) {
                last += 1;
                rest.next();
            }
            if !first_item {
                f.write_str(",")?;
            }
            first_item = false;
            if last == first {
                write!(f, "{first}")?;
            } else {
                write!(f, "{first}-{last}")?;
            }
        }
        Ok(())
    }
}

impl CpuList {
    /// Number of CPUs in the list (at least one: an empty list does not parse).
    pub fn len(&self) -> usize {
        self.cpus.len()
    }

    /// Restricts the calling thread, and every thread it starts from now on, to these CPUs.
    /// Call it before the runtime starts its threads. A CPU the process may not use (offline,
    /// or outside the set it was started with) is an error naming the ones it may use.
    #[cfg(target_os = "linux")]
    pub fn pin_current_thread(&self) -> eyre::Result<()> {
        use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
        let allowed = sched_getaffinity(None)
            .map_err(|err| eyre!("reading the CPUs this process may use: {err}"))?;
        let refused: Vec<usize> = self
            .cpus
            .iter()
            .copied()
            .filter(|cpu| !allowed.is_set(*cpu))
            .collect();
        if !refused.is_empty() {
            let allowed = Self {
                cpus: (0..CpuSet::MAX_CPU)
                    .filter(|cpu| allowed.is_set(*cpu))
                    .collect(),
            };
            return Err(eyre!(
                "CPU {} is not available to this process (it may use {allowed})",
                Self { cpus: refused }
            ));
        }
        let mut set = CpuSet::new();
        for cpu in &self.cpus {
            set.set(*cpu);
        }
        sched_setaffinity(None, &set).map_err(|err| eyre!("running on CPUs {self}: {err}"))
    }

    /// Restricting CPUs needs Linux.
    #[cfg(not(target_os = "linux"))]
    pub fn pin_current_thread(&self) -> eyre::Result<()> {
        Err(eyre!(
            "restricting the CPUs a process runs on is supported on Linux only"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<usize>, String> {
        text.parse::<CpuList>().map(|list| list.cpus)
    }

    #[test]
    fn lists_of_numbers_and_ranges_parse_sorted_and_once_each() {
        assert_eq!(parse("0"), Ok(vec![0]));
        assert_eq!(parse("0-3"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse("6,0-2, 1,4"), Ok(vec![0, 1, 2, 4, 6]));
        assert_eq!(parse("1023"), Ok(vec![1023]));
        let list: CpuList = "6,0-2,1,4,5".parse().expect("parses");
        assert_eq!(list.to_string(), "0-2,4-6");
        assert_eq!(list.len(), 6);
        assert_eq!(list.to_string().parse::<CpuList>(), Ok(list));
    }

    #[test]
    fn malformed_lists_are_refused_naming_the_problem() {
        for (text, problem) in [
            ("", "`` is not a CPU number"),
            ("a", "`a` is not a CPU number"),
            ("0,,1", "`` is not a CPU number"),
            ("-1", "`` is not a CPU number"),
            ("3-1", "the range 3-1 runs backwards"),
            ("1024", "CPU 1024 is above the highest possible, 1023"),
            ("0-99999", "CPU 99999 is above the highest possible"),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.contains(problem), "{text:?}: {error}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_cpu_outside_the_process_set_is_refused_and_the_affinity_kept() {
        use rustix::thread::sched_getaffinity;
        let before = sched_getaffinity(None).expect("affinity readable");
        let error = "1023"
            .parse::<CpuList>()
            .expect("parses")
            .pin_current_thread()
            .expect_err("no test machine has CPU 1023");
        assert!(
            error.to_string().contains("CPU 1023 is not available"),
            "{error}"
        );
        assert_eq!(sched_getaffinity(None).expect("affinity readable"), before);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pinning_restricts_the_thread_and_the_threads_it_starts() {
        use rustix::thread::sched_getaffinity;
        // A thread of its own, so the test harness's threads keep their CPUs.
        std::thread::spawn(|| {
            let first = (0..1024)
                .find(|cpu| sched_getaffinity(None).expect("readable").is_set(*cpu))
                .expect("the process may use some CPU");
            let list: CpuList = first.to_string().parse().expect("parses");
            list.pin_current_thread().expect("pinned");
            let mine = sched_getaffinity(None).expect("readable");
            assert_eq!(mine.count(), 1);
            assert!(mine.is_set(first));
            let child = std::thread::spawn(|| sched_getaffinity(None).expect("readable"))
                .join()
                .expect("child thread");
            assert_eq!(child, mine);
        })
        .join()
        .expect("test thread");
    }
}
