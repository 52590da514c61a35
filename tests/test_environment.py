"""The environment block that tells which published row a run should match."""

import json

from redreg_jax import environment


def test_vector_isa_is_the_widest_the_cpu_has():
  assert environment.vector_isa({"sse4_2", "avx", "avx2", "avx512f", "avx512_bf16"}) == "AVX512"
  assert environment.vector_isa({"sse4_2", "avx", "avx2"}) == "AVX2"
  assert environment.vector_isa({"fp", "asimd"}) == ""  # Not x86.


def test_max_isa_cap_lowers_it_and_never_raises_it():
  avx512 = {"avx", "avx2", "avx512f"}
  assert environment.max_isa_cap("--xla_cpu_max_isa=avx2 --foo=1") == "AVX2"
  assert environment.max_isa_cap("--foo=1") is None
  assert environment.vector_isa(avx512, "AVX2") == "AVX2"
  assert environment.vector_isa(avx512, "AVX512_BF16") == "AVX512"
  assert environment.vector_isa({"avx", "avx2"}, "AVX512") == "AVX2"  # A cap adds nothing.


def test_cpuinfo_reads_model_and_flags(tmp_path):
  f = tmp_path / "cpuinfo"
  f.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse4_2 avx avx2\n\n"
               "processor\t: 1\nmodel name\t: Some CPU 9000\nflags\t\t: fpu\n")
  model, flags = environment._cpuinfo(str(f))
  assert model == "Some CPU 9000" and {"avx2", "sse4_2"} <= flags
  assert environment._cpuinfo(str(tmp_path / "missing")) == ("", set())


def test_describe_is_json_and_names_the_versions(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX")
  env = environment.describe()
  json.dumps(env)
  assert env["versions"]["jax"] and env["versions"]["flax"] and env["backend"] == "cpu"
  assert env["xla_flags"] == "--xla_cpu_max_isa=AVX"
  line = environment.one_line(env)
  assert line.startswith(f"jax {env['versions']['jax']}, flax ") and " on cpu" in line
