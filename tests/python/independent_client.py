"""An independent client: proves the contract is usable outside Rust.

Generates stubs from proto/ with grpc_tools at run time, then, over mutual
TLS: health-checks the gateway, lists its services through reflection
(v1alpha, as common tools speak it), verifies a known subscriber, and decodes
the google.rpc.BadRequest details of a rejected request.

Usage: independent_client.py PORT CA CERT KEY PROTO_DIR
Prints one line per check; exits non-zero on the first failure.
"""

import importlib
import sys
import tempfile

import grpc
from grpc_tools import protoc


def main() -> int:
    port, ca, cert, key, proto_dir = sys.argv[1:6]
    out = tempfile.mkdtemp()
    rc = protoc.main([
        "protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
        "simverify/v1/verification.proto",
    ])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, out)
    pb = importlib.import_module("simverify.v1.verification_pb2")
    pb_grpc = importlib.import_module("simverify.v1.verification_pb2_grpc")

    creds = grpc.ssl_channel_credentials(
        root_certificates=open(ca, "rb").read(),
        private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read(),
    )
    channel = grpc.secure_channel(f"localhost:{port}", creds)

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="simverify.v1.Verification"), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health
    print("health SERVING")

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = sorted(s.name for r in responses for s in r.list_services_response.service)
    assert "simverify.v1.Verification" in names, names
    print("reflection " + ",".join(names))

    stub = pb_grpc.VerificationStub(channel)
    answer = stub.Verify(pb.VerifyRequest(
        request_id="py-1", msisdn="+84912345678", id_number="001190012345",
        full_name="NGUYỄN THỊ MINH KHAI", date_of_birth="1990-05-17", sex=pb.SEX_FEMALE,
        purpose=pb.PURPOSE_ACTIVATION), timeout=10)
    assert answer.decision == pb.DECISION_VERIFIED, answer
    assert answer.name_tier == pb.NAME_TIER_EXACT, answer
    assert answer.audit_id, answer
    print("verify " + pb.Decision.Name(answer.decision) + " " + answer.audit_id)

    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    try:
        stub.Verify(pb.VerifyRequest(request_id="py-2", msisdn="0241234567", id_number="123456789"),
                    timeout=10)
        raise AssertionError("invalid request was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        status = rpc_status.from_call(e)
        violations = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [f"{v.field}:{v.reason}" for v in bad.field_violations]
        assert "id_number:CMND_NO_LONGER_VALID" in violations, violations
        assert "msisdn:UNKNOWN_MOBILE_PREFIX" in violations, violations
        print("bad_request " + ",".join(violations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
