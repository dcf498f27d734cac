//! Embeds minetd in a program: the server runs on this program's main
//! thread, a client thread talks to it, and another thread stops it.
//!
//! ```sh
//! cargo run --example embed
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;

use minetd::{Config, Server, Service};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut server = Server::bind(&Config {
        echo: vec!["127.0.0.1:0".parse()?],
        ..Config::default()
    })?;
    let echo_addr = server
        .local_addrs()
        .into_iter()
        .find(|(service, _)| *service == Service::Echo)
        .map(|(_, addr)| addr)
        .ok_or("no echo listener")?;
    println!("embedded echo on {echo_addr}");

    // The handle is all another thread needs to stop the server.
    let stop = server.shutdown_handle();
    let client = thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(echo_addr)?;
        stream.write_all(b"hello from another thread\n")?;
        stream.shutdown(Shutdown::Write)?;
        let mut echoed = Vec::new();
        stream.read_to_end(&mut echoed)?;
        stop.shutdown();
        Ok(echoed)
    });

    // Serves on this thread until the client thread asks it to stop.
    server.run()?;

    let echoed = client.join().map_err(|_| "client thread panicked")??;
    print!("echoed: {}", String::from_utf8_lossy(&echoed));
    println!("server stopped; {} connections open", server.connections());
    Ok(())
}
