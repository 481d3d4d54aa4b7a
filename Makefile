# ferry: convenience targets over Meson/Ninja (the C build) and the guest
# image build. `make demo` is the README's first command, `make test` the
# second.
BUILD ?= build

.PHONY: all ferry guest deps demo test bench clean asan

all: ferry guest

deps:
	scripts/install-deps

$(BUILD)/build.ninja:
	meson setup $(BUILD)

ferry: $(BUILD)/build.ninja
	ninja -C $(BUILD)

guest:
	guest/build.sh

demo: deps all
	scripts/demo

# unit tests run twice: in the normal build and under ASan/UBSan
$(BUILD)-asan/build.ninja:
	meson setup $(BUILD)-asan -Db_sanitize=address,undefined -Db_lundef=false

asan: $(BUILD)-asan/build.ninja
	ninja -C $(BUILD)-asan

# The CPU's default executor is the JIT. The tests where the executor
# matters run a second time on the reference interpreter (FERRY_CPU=interp),
# in the same run, as tests of their own named FERRY_CPU=interp:NAME: the
# hart's unit tests, the differential tests, the idle and WFI tests, an SMP
# boot, and a pre-copy, an SMP back-and-forth and a post-copy migration and
# a save/restore (state saved and loaded at instruction boundaries, the
# dirty log and missing pages through the interpreter's own memory path).
# The rest does not depend on the executor (devices, control socket,
# cluster, planner).
INTERP_TESTS = test-hart|test_diff_|test_cpu.py|test_boot_with_four_harts|test_migrate_memload_smp1|test_migrate_back_and_forth_smp4|test_save_and_restore|test_big_hot_set_completes_by_postcopy

# Three tests at a time (tests/run -j 3): most of a test's time is waiting
# (guests booting, leases, links), about one core busy at -j 2; the tests
# their modules' SERIAL names (HA, FT, round budgets) run alone, first.
TEST_JOBS ?= 3
test: deps all asan
	tests/run -j $(TEST_JOBS) --sanitized-build $(BUILD)-asan \
		--again FERRY_CPU=interp '$(INTERP_TESTS)'

bench: all
	bench/run

clean:
	rm -rf $(BUILD) $(BUILD)-asan
