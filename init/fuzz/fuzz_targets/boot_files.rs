//! What stage 1 and blessing read from the kernel, the firmware and the
//! disk: modules.dep, modules.alias, device modaliases (and the virtio
//! devices predicted from them), an efivar's UTF-16 string, a UKI file
//! name with its boot counter, the head of the data partition, and the
//! disk's GPT (growing the data partition).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = fluxnode_init::stage1::modules::parse_dep(&text);
    let aliases = fluxnode_init::stage1::modalias::parse_alias(&text);
    let _ = fluxnode_init::stage1::modalias::buses_for(&aliases);
    let devices: std::collections::BTreeSet<String> = text.lines().map(String::from).collect();
    let _ = fluxnode_init::stage1::modalias::virtio_children(&devices);
    let _ = fluxnode_init::bless::strip_counter(&text);
    let _ = fluxnode_init::bless::decode_efi_string(data);
    let _ = fluxnode_init::stage1::data::classify(data);
    // The GPT as read from the disk: header sector, then the entry array.
    if data.len() >= 512 {
        let (head, rest) = data.split_at(512);
        let _ = fluxnode_init::stage1::gpt::plan_grow(head, rest, 1 << 20, 512, "data", 1);
        if let Ok(h) = fluxnode_init::stage1::gpt::parse_header(head) {
            let _ = fluxnode_init::stage1::gpt::parse_entries(&h, head, rest);
        }
    }
});
