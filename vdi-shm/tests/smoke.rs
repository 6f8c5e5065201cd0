//! A backup between two threads of one process: the plumbing, end to end.

#![cfg(any(target_os = "linux", windows))]

use std::thread;

use vdi_core::{
    ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet, CommandCode,
    Completion, Error, ServerBackend, ServerBuffer, ServerCommand, ServerConfig, ServerDevice,
    ServerDeviceSet, Timeout,
};
use vdi_shm::{ShmClient, ShmServer};

#[test]
fn one_device_backup_between_threads() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_test_writer()
        .try_init();
    let name = format!("smoke-{}", std::process::id());
    let set = ShmClient::new()
        .create(None, &name, &ClientConfig::default())
        .unwrap();
    let server_name = name.clone();
    let server = thread::spawn(move || {
        let s = ShmServer::new().open(None, &server_name).unwrap();
        s.begin_configuration(&ServerConfig::backup(512, 65536))
            .unwrap();
        s.request_buffers(65536, 0, 4).unwrap();
        let dev = s.open_device(&server_name).unwrap();
        s.end_configuration().unwrap();
        assert_eq!(s.open_device("other").unwrap_err(), Error::Open);
        let mut bufs: Vec<_> = (0..4)
            .map(|_| s.allocate_buffer(65536, 0).unwrap())
            .collect();
        for i in 0..100u32 {
            let mut b = match bufs.pop() {
                Some(b) => b,
                None => dev
                    .completion(Timeout::from_millis(10_000))
                    .unwrap()
                    .buffer
                    .unwrap(),
            };
            b.as_mut_slice().fill(i as u8);
            dev.send(ServerCommand::write(b, 65536)).unwrap();
        }
        while dev.outstanding() > 0 {
            let c = dev.completion(Timeout::from_millis(10_000)).unwrap();
            assert_eq!(c.completion, Completion::success(65536));
        }
        dev.send(ServerCommand::control(CommandCode::FLUSH))
            .unwrap();
        let c = dev.completion(Timeout::from_millis(10_000)).unwrap();
        assert_eq!(c.code, CommandCode::FLUSH);
        dev.close().unwrap();
        assert_eq!(dev.completion(Timeout::POLL).unwrap_err(), Error::Closed);
        s.close().unwrap();
    });
    let cfg = set.configuration(Timeout::from_millis(10_000)).unwrap();
    assert!(cfg.is_backup());
    let dev = set.open_device(&name).unwrap();
    let mut next = 0u32;
    loop {
        match dev.command(Timeout::from_millis(10_000)) {
            Ok(cmd) => {
                if cmd.code() == CommandCode::WRITE {
                    assert!(cmd.data().iter().all(|&b| b == next as u8), "write {next}");
                    next += 1;
                    let n = cmd.size();
                    dev.complete(cmd, Completion::success(n)).unwrap();
                } else {
                    assert_eq!(cmd.code(), CommandCode::FLUSH);
                    dev.complete(cmd, Completion::success(0)).unwrap();
                }
            }
            Err(Error::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(next, 100);
    server.join().unwrap();
    set.close().unwrap();
}
