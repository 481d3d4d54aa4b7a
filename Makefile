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

test: deps all asan
	tests/run --sanitized-build $(BUILD)-asan

bench: all
	bench/run

clean:
	rm -rf $(BUILD) $(BUILD)-asan
