#!/usr/bin/env bash
# Test certificates and SuperNode keys for a TLS + node-authentication deployment.
#
#   docs/deploy/generate-certs.sh OUT_DIR SERVER_ADDRESS [NUM_NODES]
#
# OUT_DIR/ca.crt               CA certificate: give it to every SuperNode and to `flwr`
# OUT_DIR/server.pem, .key     SuperLink certificate (SAN = SERVER_ADDRESS and 127.0.0.1) and key
# OUT_DIR/node<i>, node<i>.pub ECDSA key pair of edge device i (OpenSSH format)
#
# For testing only: real deployments should use certificates from their own PKI.
set -euo pipefail
out=${1:?usage: generate-certs.sh OUT_DIR SERVER_ADDRESS [NUM_NODES]}
address=${2:?usage: generate-certs.sh OUT_DIR SERVER_ADDRESS [NUM_NODES]}
nodes=${3:-2}
mkdir -p "$out"
cd "$out"

if [[ $address =~ ^[0-9.]+$ ]]; then san="IP:$address"; else san="DNS:$address"; fi
san="$san,IP:127.0.0.1,DNS:localhost"

openssl req -x509 -newkey rsa:4096 -sha256 -days 365 -nodes \
    -keyout ca.key -out ca.crt -subj "/CN=visualmixer-test-ca" 2>/dev/null
openssl req -newkey rsa:4096 -nodes -keyout server.key -out server.csr \
    -subj "/CN=$address" 2>/dev/null
printf 'subjectAltName=%s\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out server.pem -days 365 -sha256 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext

for i in $(seq 1 "$nodes"); do
    rm -f "node$i" "node$i.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -f "node$i" -C "visualmixer-node$i"
done
echo "wrote $(pwd): ca.crt server.pem server.key and $nodes node key pair(s)"
