//! Human-readable output of the inventory and of benchmark reports.

use fluxnode_hal::bench::BenchReport;
use fluxnode_hal::inventory::Inventory;

fn gb(b: u64) -> String {
    format!("{:.1} GB", b as f64 / 1e9)
}

/// Prints the inventory for a person.
pub fn inventory(inv: &Inventory) {
    let c = &inv.cpu;
    println!(
        "cpu:    {} ({} cores, {} threads, {} socket(s))",
        c.model.as_deref().unwrap_or("unknown"),
        c.cores,
        c.threads,
        c.sockets
    );
    println!(
        "        avx2 {} avx512 {} aes {} sha {}",
        c.flags.avx2, c.flags.avx512, c.flags.aes, c.flags.sha
    );
    println!(
        "memory: {} total, {} available",
        gb(inv.memory.total_bytes),
        gb(inv.memory.available_bytes)
    );
    for d in &inv.disks {
        println!(
            "disk:   {} {:?} {} {}{}{}",
            d.name,
            d.bus,
            gb(d.size_bytes),
            if d.rotational {
                "rotational"
            } else {
                "solid-state"
            },
            d.model
                .as_deref()
                .map(|m| format!(" \"{m}\""))
                .unwrap_or_default(),
            if d.holds_var {
                format!(
                    " (holds /var on {})",
                    inv.var_partition.as_deref().unwrap_or("?")
                )
            } else {
                String::new()
            }
        );
    }
    for n in &inv.nics {
        println!(
            "nic:    {} driver {} speed {} mac {}",
            n.name,
            n.driver.as_deref().unwrap_or("-"),
            n.speed_mbps
                .map(|s| format!("{s} Mb/s"))
                .unwrap_or_else(|| "-".into()),
            n.mac.as_deref().unwrap_or("-")
        );
    }
    let v = &inv.virtualization;
    println!(
        "virt:   hypervisor {} vendor {} product {}",
        v.hypervisor,
        v.dmi_vendor.as_deref().unwrap_or("-"),
        v.dmi_product.as_deref().unwrap_or("-")
    );
    let t = &inv.tpm;
    if t.present {
        println!(
            "tpm:    {} manufacturer {} firmware {} device {}",
            t.version.as_deref().unwrap_or("?"),
            t.manufacturer.as_deref().unwrap_or("?"),
            t.firmware.as_deref().unwrap_or("?"),
            t.device.as_deref().unwrap_or("-")
        );
        if let Some(e) = &t.error {
            println!("        ({e})");
        }
    } else {
        println!("tpm:    none found");
    }
    println!("gpu:    {}", inv.gpu.status);
    for g in &inv.gpu.gpus {
        println!(
            "        [{}] {} {} mem {} cc {} pcie gen{} x{} power {} W mig {} cc-mode {}",
            g.index,
            g.name.as_deref().unwrap_or("?"),
            g.uuid.as_deref().unwrap_or("?"),
            g.memory_bytes.map(gb).unwrap_or_else(|| "?".into()),
            g.compute_capability.as_deref().unwrap_or("?"),
            g.pcie_gen
                .map(|x| x.to_string())
                .unwrap_or_else(|| "?".into()),
            g.pcie_width
                .map(|x| x.to_string())
                .unwrap_or_else(|| "?".into()),
            g.power_limit_w
                .map(|x| format!("{x:.0}"))
                .unwrap_or_else(|| "?".into()),
            g.mig_enabled
                .map(|x| x.to_string())
                .unwrap_or_else(|| "?".into()),
            g.confidential_computing
                .map(|x| x.to_string())
                .unwrap_or_else(|| "?".into()),
        );
    }
}

/// Prints a benchmark report for a person.
pub fn bench(r: &BenchReport) {
    for (label, c) in [
        ("cpu (all threads)", &r.cpu),
        ("cpu (one thread)", &r.cpu_single),
    ] {
        if let Some(c) = c {
            println!(
                "{label}: {:.2} events/s ({} events in {:.2} s, {} thread(s), max prime {}; per-interval CV {:.1}%; got {:.0}% of the CPU)",
                c.eps,
                c.events,
                c.duration_s,
                c.threads,
                c.max_prime,
                c.intervals.cv_pct,
                c.cpu_share * 100.0
            );
            println!(
                "    commitment {} over {} chunks",
                hex::encode(c.commitment.root),
                c.commitment.chunks
            );
        }
    }
    if let Some(m) = &r.memory {
        println!(
            "memory: read {:.2} GB/s, write {:.2} GB/s over {} MiB (read CV {:.1}%); usable {:.1} GB of {:.1} GB",
            m.read_gbps,
            m.write_gbps,
            m.buffer_bytes >> 20,
            m.read_passes.cv_pct,
            m.usable_bytes as f64 / 1e9,
            m.total_bytes as f64 / 1e9
        );
        println!(
            "    commitment {} over {} chunks",
            hex::encode(m.commitment.root),
            m.commitment.chunks
        );
    }
    if let Some(d) = &r.disk {
        let runs: Vec<String> = d.runs_mbps.iter().map(|x| format!("{x:.1}")).collect();
        println!(
            "disk write: {:.1} MB/s (runs {} MB/s of {} MiB in {}; lowest dropped, range of kept {:.1}%)",
            d.write_mbps,
            runs.join(", "),
            d.bytes >> 20,
            d.dir.display(),
            d.range_pct
        );
        if let Some(i) = d.iops_4k {
            println!("disk 4k random write: {i:.0} IOPS (O_DIRECT, QD1)");
        }
        println!(
            "    commitment {} over {} chunks",
            hex::encode(d.commitment.root),
            d.commitment.chunks
        );
    }
    if let Some(g) = &r.gpu {
        println!(
            "gpu {}: {:.2} TFLOP/s SGEMM n={} (CV {:.1}%)",
            g.device, g.tflops, g.n, g.iterations.cv_pct
        );
    }
    println!("wall time: {:.1} s", r.wall_s);
}
